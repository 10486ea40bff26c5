#!/usr/bin/env python3
"""Benchmark timeservice against the assignment's sketch, an asyncio server and
a minimal C server on epoll (built with the system's C compiler, if any).

Each server runs as its own process on loopback, port 0; the load comes from
other processes, one closed request/reply loop per connection. Servers take
turns within every round, so the machine's drift hits all of them alike, and
the table shows the median over the rounds. Progress goes to stderr, the
table to stdout. Where chronyd is installed, NTP over UDP is measured too:
this server's NTP service against chronyd serving ``local stratum 10``, both
with their rate limits off.

    python scripts/bench.py [--rounds N] [--seconds S] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import multiprocessing
import os
import platform
import re
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
REQUEST = b"send time\n"
REPLY = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d\n")
REPLY_BYTES = len(b"2026-11-27T10:15:42.000000+01:00\n")  # every timestamp line
IDLE_CONNECTIONS = 1000
START_TIMEOUT = 10.0
SERVER_NAMES = {
    "ours": "timeservice",
    "workers": "2 workers",
    "seed": "seed sketch",
    "asyncio": "asyncio",
    "c": "C epoll",
}
SERVERS = {
    # Ours as shipped, but for caps above the idle connections, which all
    # come from this one host (defaults: 512 in all, 64 per host).
    "ours": [
        sys.executable,
        "-m",
        "timeservice.server",
        "-q",
        "--max-connections",
        str(IDLE_CONNECTIONS + 100),
        "--max-per-host",
        "0",
        "0",
    ],
    # The same with two worker processes (--workers 2), where there is fork().
    "workers": [
        sys.executable,
        "-m",
        "timeservice.server",
        "-q",
        "--workers",
        "2",
        "0",
    ],
    "seed": [sys.executable, str(PEERS / "seed.py")],
    "asyncio": [sys.executable, str(PEERS / "asyncio_streams.py")],
}


class Server:
    """One server process to benchmark, ended by its pid when done."""

    def __init__(self, name: str, command=None, line: str | None = r"port (\d+)"):
        self.name = name
        self.process = subprocess.Popen(
            command or SERVERS[name], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        if line is None:  # the caller knows the address and when it is ready
            return
        found, text = None, ""
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        # The start-up lines come together: after the first, no more waiting.
        for _ in range(5 if ready else 0):
            text = self.process.stdout.readline()
            found = re.search(line, text)
            if found or not text:
                break
        if not found:
            self.stop()
            raise RuntimeError(f"{name} did not start: {text!r}")
        self.address = ("127.0.0.1", int(found.group(1)))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def rss(self) -> int:
        """Resident memory in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> float:
        """CPU seconds used so far, user and system, its worker processes' too."""
        pid = self.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            pids = [pid, *(int(child) for child in listed.read().split())]
        ticks = 0
        for each in pids:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


# The load: the cheapest loops this can be written as in Python.


def connect(address) -> socket.socket:
    """A connected socket, without create_connection()'s name lookup."""
    sock = socket.socket()
    sock.connect(address)
    return sock


def read_reply(sock: socket.socket, first: bytes) -> bytes:
    while not first.endswith(b"\n"):
        more = sock.recv(256)
        if not more:
            raise ConnectionError("server closed the connection")
        first += more
    return first


def ask(sock: socket.socket) -> bytes:
    """Send one request on a blocking socket and return the reply line."""
    sock.sendall(REQUEST)
    return read_reply(sock, sock.recv(256))


def one_connection(address, start, end, reconnect):
    """One client in a blocking loop; returns latencies (ns) and bad replies."""
    clock = time.monotonic_ns
    latencies = array.array("q")
    record = latencies.append
    bad = 0
    sock = None if reconnect else connect(address)
    while True:
        t0 = clock()
        if reconnect:
            sock = connect(address)
        sock.send(REQUEST)
        reply = sock.recv(256)
        if reply[-1:] != b"\n":
            reply = read_reply(sock, reply)
        if reconnect:
            sock.close()
        t1 = clock()
        if len(reply) != REPLY_BYTES:
            bad += 1
        elif t0 >= start:
            record(t1 - t0)
        if t1 >= end:
            break
    if not reconnect:
        sock.close()
    return latencies, bad


def many_connections(address, count, start, end, reconnect):
    """`count` clients multiplexed with epoll; returns latencies (ns), bad replies."""
    clock = time.monotonic_ns
    latencies = array.array("q")
    record = latencies.append
    bad = 0
    poller = select.epoll()
    sockets, sent = {}, {}

    def ask(sock=None):
        t0 = clock()
        if sock is None:
            sock = connect(address)
            sock.setblocking(False)
            fd = sock.fileno()
            sockets[fd] = sock
            poller.register(fd, select.EPOLLIN)
        sock.send(REQUEST)
        sent[sock.fileno()] = t0

    for _ in range(count):
        ask()
    give_up = end + 10 * 10**9
    while sockets and clock() < give_up:
        for fd, _ in poller.poll(1.0):
            sock = sockets[fd]
            reply = sock.recv(256)
            if reply[-1:] != b"\n":
                sock.setblocking(True)
                sock.settimeout(5)
                reply = read_reply(sock, reply)
                sock.setblocking(False)
            t1 = clock()
            t0 = sent[fd]
            if len(reply) != REPLY_BYTES:
                bad += 1
            elif t0 >= start:
                record(t1 - t0)
            if reconnect or t1 >= end:
                poller.unregister(fd)
                del sockets[fd]
                sock.close()
            if t1 < end:
                ask(None if reconnect else sock)
    for sock in sockets.values():
        sock.close()
    poller.close()
    return latencies, bad


NTP_REQUEST = bytes([0x23]) + bytes(39) + bytes(range(1, 9))  # version 4, client
LOST_AFTER = 10**9  # ns without a reply: the datagram is counted lost, sent again


def ntp_clients(address, count, start, end, reconnect=False):
    """`count` NTP clients on UDP, multiplexed with epoll; latencies (ns), bad."""
    clock = time.monotonic_ns
    latencies = array.array("q")
    record = latencies.append
    bad = 0
    poller = select.epoll()
    sockets, sent = {}, {}
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(address)
        sock.setblocking(False)
        sockets[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN)
        sent[sock.fileno()] = clock()
        sock.send(NTP_REQUEST)
    while clock() < end:
        for fd, _ in poller.poll(0.1):
            reply = sockets[fd].recv(512)
            t1 = clock()
            t0 = sent[fd]
            if len(reply) != 48 or reply[24:32] != NTP_REQUEST[40:] or reply[1] == 0:
                bad += 1
            elif t0 >= start:
                record(t1 - t0)
            sent[fd] = clock()
            sockets[fd].send(NTP_REQUEST)
        now = clock()
        for fd, t0 in sent.items():
            if now - t0 > LOST_AFTER:
                bad += 1
                sent[fd] = now
                sockets[fd].send(NTP_REQUEST)
    for sock in sockets.values():
        sock.close()
    poller.close()
    return latencies, bad


def driver(address, count, start, end, reconnect, results):
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        if reconnect == "ntp":
            latencies, bad = ntp_clients(address, count, start, end)
        elif count == 1:
            latencies, bad = one_connection(address, start, end, reconnect)
        else:
            latencies, bad = many_connections(address, count, start, end, reconnect)
    except Exception as exc:
        results.put(exc)
        return
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.put((latencies.tobytes(), bad, cpu))


def percentile(ordered, fraction):
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run_load(server, connections, reconnect, seconds, warmup):
    """Drive `server` from separate processes; return the figures of one run."""
    processes = 1 if connections < 8 else 2
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    now = time.monotonic_ns()
    start = now + int((warmup + 0.2) * 1e9)
    end = start + int(seconds * 1e9)
    share = [
        connections // processes + (i < connections % processes)
        for i in range(processes)
    ]
    workers = [
        context.Process(
            target=driver, args=(server.address, n, start, end, reconnect, results)
        )
        for n in share
    ]
    for worker in workers:
        worker.start()
    # Sample the server's CPU over the measured window only.
    time.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
    cpu_before = server.cpu()
    time.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    server_cpu = server.cpu() - cpu_before
    latencies, bad, driver_cpu = array.array("q"), 0, 0.0
    for _ in workers:
        result = results.get(timeout=seconds + warmup + 30)
        if isinstance(result, Exception):
            raise RuntimeError(f"{server.name}: load generator failed: {result!r}")
        data, worker_bad, cpu = result
        latencies.frombytes(data)
        bad += worker_bad
        driver_cpu += cpu
    for worker in workers:
        worker.join()
    ordered = sorted(latencies)
    if not ordered:
        raise RuntimeError(f"{server.name}: no replies")
    rps = len(ordered) / seconds
    busy = driver_cpu / ((seconds + warmup + 0.2) * processes)
    return {
        "rps": rps,
        "p50_ms": percentile(ordered, 0.50) / 1e6,
        "p99_ms": percentile(ordered, 0.99) / 1e6,
        "bad_replies": bad,
        "server_cpu": server_cpu / seconds,  # cores kept busy
        "load_gen_busy": busy,  # share of its processes' time on a CPU
        "load_gen_max_rps": rps / busy if busy else 0.0,  # if it never waited
    }


def idle_memory(server, count):
    """Resident memory the server adds to hold `count` idle connections."""
    check_replies(server)  # the server has served once before it is measured
    before = server.rss()
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection(server.address, timeout=5)
            held.append(sock)
            if len(ask(sock)) != REPLY_BYTES:
                raise RuntimeError(f"{server.name}: bad reply")
        return {"idle_mib": before / 2**20, "held_mib": (server.rss() - before) / 2**20}
    finally:
        for sock in held:
            sock.close()


def check_replies(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        reply = ask(sock)
    if not REPLY.fullmatch(reply):
        raise RuntimeError(f"{server.name} answered {reply!r}")


WORKLOADS = [
    # name, connections, new connection per request
    ("1 connection, persistent", 1, False),
    ("8 connections, persistent", 8, False),
    ("64 connections, persistent", 64, False),
    ("1 client, connection per request", 1, True),
    ("8 clients, connection per request", 8, True),
]
MEMORY = f"{IDLE_CONNECTIONS} idle connections"
NTP_WORKLOAD = ("NTP over UDP, 8 clients", 8, "ntp")
NTP_NAMES = {"ours": "timeservice", "chronyd": "chronyd"}
OURS_NTP = [
    sys.executable,
    "-m",
    "timeservice.server",
    "-q",
    "--ntp",
    "0",
    "--local-stratum",
    "10",
    "--no-rate-limit",
    "0",
]


def start_ntp_server(name, workdir):
    """Our NTP service, or chronyd serving its local clock at stratum 10.

    chronyd has no rate limit unless its configuration sets one; -x leaves
    the system clock alone. It is ready once it answers.
    """
    if name == "ours":
        return Server(name, OURS_NTP, r"Serving NTP on \S+ port (\d+)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Path(workdir) / "chrony.conf"
    config.write_text(
        f"local stratum 10\nport {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\n"
        f"cmdport 0\npidfile {workdir}/chronyd.pid\n"
    )
    command = ["chronyd", "-d", "-x", "-u", "root", "-f", str(config)]
    server = Server(name, command, line=None)
    server.address = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(75):  # each try waits on the socket: 15 s at the most
            sock.sendto(NTP_REQUEST, server.address)
            try:
                if sock.recv(512)[1] != 0:  # stratum 10: the local clock is in use
                    return server
            except TimeoutError:
                continue
            with contextlib.suppress(TimeoutError):
                sock.recv(512)
    server.stop()
    raise RuntimeError("chronyd did not answer as stratum 10")


def raise_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or soft >= needed


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


def build_c_server(workdir):
    """The C epoll peer, compiled with the system's C compiler; None without one."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("no C compiler (cc); no C epoll server", file=sys.stderr)
        return None
    binary = os.path.join(workdir, "epoll_server")
    source = str(PEERS / "epoll_server.c")
    built = subprocess.run(
        [compiler, "-O2", "-o", binary, source], capture_output=True, text=True
    )
    if built.returncode != 0:
        print(f"the C epoll server did not build:\n{built.stderr}", file=sys.stderr)
        return None
    return binary


def run(args):
    workdir = tempfile.mkdtemp(prefix="bench-")
    c_server = build_c_server(workdir)
    if c_server is not None:
        SERVERS["c"] = [c_server]
    if not hasattr(os, "fork"):
        SERVERS.pop("workers")
    servers = list(SERVERS)
    memory_ok = raise_file_limit(IDLE_CONNECTIONS + 200)
    if not memory_ok:
        print(
            f"open-file limit too low for {MEMORY}; skipping that run", file=sys.stderr
        )
    samples = {name: {server: [] for server in servers} for name, _, _ in WORKLOADS}
    memory = {server: [] for server in servers}
    ntp_servers = list(NTP_NAMES) if shutil.which("chronyd") else []
    if not ntp_servers:
        print("chronyd is not installed; no NTP row", file=sys.stderr)
    ntp = {server: [] for server in ntp_servers}
    for number in range(args.rounds):
        order = servers[number % len(servers) :] + servers[: number % len(servers)]
        for name, connections, reconnect in WORKLOADS:
            for server_name in order:
                progress(number, args.rounds, server_name, name)
                with Server(server_name) as server:
                    check_replies(server)
                    samples[name][server_name].append(
                        run_load(
                            server, connections, reconnect, args.seconds, args.warmup
                        )
                    )
        if memory_ok:
            for server_name in [s for s in order if s != "workers"]:  # one process
                progress(number, args.rounds, server_name, MEMORY)
                with Server(server_name) as server:
                    memory[server_name].append(idle_memory(server, IDLE_CONNECTIONS))
        name, clients, kind = NTP_WORKLOAD
        for server_name in ntp_servers[number % 2 :] + ntp_servers[: number % 2]:
            round_ = f"round {number + 1} of {args.rounds}"
            print(f"{round_}: {NTP_NAMES[server_name]}, {name}", file=sys.stderr)
            with start_ntp_server(server_name, workdir) as server:
                ntp[server_name].append(
                    run_load(server, clients, kind, args.seconds, args.warmup)
                )
    shutil.rmtree(workdir, ignore_errors=True)
    return summarise(args, samples, memory, ntp)


def progress(number, rounds, server, workload):
    print(
        f"round {number + 1} of {rounds}: {SERVER_NAMES[server]}, {workload}",
        file=sys.stderr,
        flush=True,
    )


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def summarise(args, samples, memory, ntp):
    results = {}
    for name, runs_by_server in samples.items():
        results[name] = {
            server: {key: median_of(runs, key) for key in runs[0]} | {"rounds": runs}
            for server, runs in runs_by_server.items()
        }
    ratios = {
        name: {
            peer: results[name]["ours"]["rps"] / results[name][peer]["rps"]
            for peer in SERVERS
            if peer != "ours"
        }
        for name in results
    }
    memory_results = {
        server: {key: median_of(runs, key) for key in runs[0]} | {"rounds": runs}
        for server, runs in memory.items()
        if runs
    }
    ntp_results = {
        server: {key: median_of(runs, key) for key in runs[0]} | {"rounds": runs}
        for server, runs in ntp.items()
    }
    return {
        "ntp": ntp_results,
        "ntp_ratio": (
            ntp_results["ours"]["rps"] / ntp_results["chronyd"]["rps"]
            if ntp_results
            else None
        ),
        "machine": machine(),
        "command": " ".join(["python", "scripts/bench.py"] + args.argv),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "workloads": results,
        "ratios": ratios,
        "memory": memory_results,
    }


def table(report):
    """The report as text: one row per workload and server, then the ratios."""
    m = report["machine"]
    out = [
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['kernel']}",
        f"median of {report['rounds']} rounds of {report['seconds']:g} s each",
        "",
        f"{'workload':<34} {'server':<12} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'server CPU':>10} {'load gen':>8} {'gen max':>8}",
    ]
    for name, by_server in report["workloads"].items():
        for i, (server, r) in enumerate(by_server.items()):
            out.append(
                f"{name if i == 0 else '':<34} {SERVER_NAMES[server]:<12}"
                f" {r['rps']:>8,.0f} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f}"
                f" {r['server_cpu']:>10.0%} {r['load_gen_busy']:>8.0%}"
                f" {r['load_gen_max_rps']:>8,.0f}"
            )
    peers = list(next(iter(report["ratios"].values())))
    heading = "".join(f" {SERVER_NAMES[peer]:>12}" for peer in peers)
    out += ["", f"{'timeservice req/s ÷ peer req/s':<34}{heading}"]
    for name, ratio in report["ratios"].items():
        out.append(f"{name:<34}" + "".join(f" {ratio[p]:>11.2f}x" for p in peers))
    if report["memory"]:
        heading = f"{MEMORY}, RSS"
        out += ["", f"{heading:<34} {'server':<12} {'idle MiB':>8} {'+ MiB':>7}"]
        for server, r in report["memory"].items():
            out.append(
                f"{'':<34} {SERVER_NAMES[server]:<12}"
                f" {r['idle_mib']:>8.1f} {r['held_mib']:>7.1f}"
            )
    for i, (server, r) in enumerate(report["ntp"].items()):
        if i == 0:
            out += ["", f"{NTP_WORKLOAD[0]:<34}"]
        out.append(
            f"{'':<34} {NTP_NAMES[server]:<12}"
            f" {r['rps']:>8,.0f} {r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f}"
            f" {r['server_cpu']:>10.0%} {r['load_gen_busy']:>8.0%}"
            f" {r['load_gen_max_rps']:>8,.0f}"
        )
    if report["ntp_ratio"] is not None:
        out.append(f"{'timeservice ÷ chronyd':<34} {report['ntp_ratio']:>11.2f}x")
    bad = sum(
        r["bad_replies"] for by in report["workloads"].values() for r in by.values()
    ) + sum(r["bad_replies"] for r in report["ntp"].values())
    if bad:
        out += ["", f"WARNING: {bad} replies were not a timestamp line"]
    out += [
        "",
        "server CPU: cores the server kept busy (100% = one core). load gen: how much",
        "of its time the load generator spent on a CPU; gen max: the req/s it could",
        "drive at that cost if it never had to wait for the server.",
    ]
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="measured seconds per run (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="unmeasured seconds before each run (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round, to check that the script works",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 0.2, 0.1
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds and --seconds must be positive")
    report = run(args)
    print(table(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
