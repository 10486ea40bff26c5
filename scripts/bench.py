#!/usr/bin/env python3
"""Benchmark timeservice against the assignment's sketch, an asyncio server and
a minimal C server on epoll (built with the system's C compiler, if any).

Each server runs as its own process on loopback, port 0. The load comes from
a generator written in C (scripts/peers/load.c, built like the C server): a
thread per connection, each in a closed request/reply loop, so that it can
drive more than any server here can take. Where there is no C compiler, the
load comes from Python processes instead, and the rows say so. For every
workload the server's CPU time per reply (user and system, its whole process
tree, from /proc) stands beside its rate, and so does the generator's: a row
where the generator used most of the CPU the server left it is marked
generator-bound, and no rate ratio is made of it.

A round starts every server afresh for every workload, the servers taking
turns, so that the machine's drift hits all of them alike; the table shows
the median over the rounds and the spread between them. Progress goes to
stderr, the table to stdout. Where chronyd is installed, NTP over UDP is
measured too: this server's NTP service against chronyd serving ``local
stratum 10``, both with their rate limits off.

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
# A row is generator-bound when the generator was on a CPU for this share of
# the time it could have been: of its threads' (or processes') time, at most
# the cores the server left free.
GENERATOR_BOUND = 0.8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))
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


# Where each server's code is: ROOT, but for --against's "before".
TREES: dict[str, Path] = {}


class Server:
    """One server process to benchmark, ended by its pid when done."""

    def __init__(self, name: str, command=None, line: str | None = r"port (\d+)"):
        self.name = name
        self.process = subprocess.Popen(
            command or SERVERS[name],
            cwd=TREES.get(name, ROOT),
            stdout=subprocess.PIPE,
            text=True,
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

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far, user and system, its worker processes' too."""
        return tree_cpu(self.process.pid)


def tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its descendants, all threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        for child in listed.read().split():
            more = tree_cpu(int(child))
            user, system = user + more[0], system + more[1]
    return user, system


def sleep_until(monotonic_ns: int) -> None:
    time.sleep(max(0.0, (monotonic_ns - time.monotonic_ns()) / 1e9))


class CLoad:
    """The C load generator, running one workload: a thread per connection."""

    label = "C"

    def __init__(self, binary, address, connections, mode, start, end):
        self.parallel = connections  # threads that can be on a CPU at once
        figures = (address[1], connections, start, end)
        self.process = subprocess.Popen(
            [binary, mode, *map(str, figures)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pids = [self.process.pid]
        self.timeout = (end - time.monotonic_ns()) / 1e9 + 30

    def results(self) -> tuple[int, int, int, int]:
        """Replies, bad replies, median and 99th percentile latency (ns)."""
        out, _ = self.process.communicate("", timeout=self.timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"the load generator failed: {out!r}")
        figures = dict(item.split("=") for item in out.split())
        replies, bad, p50, p99 = (
            int(figures[key]) for key in ("replies", "bad", "p50_ns", "p99_ns")
        )
        return replies, bad, p50, p99

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


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


def driver(address, count, start, end, mode, results, release):
    """One Python load process: its clients' latencies and bad replies, put in
    `results`; it stays until `release` is set, so that its CPU can be read."""
    try:
        if mode == "ntp":
            latencies, bad = ntp_clients(address, count, start, end)
        elif count == 1:
            latencies, bad = one_connection(address, start, end, mode == "per-request")
        else:
            latencies, bad = many_connections(
                address, count, start, end, mode == "per-request"
            )
    except Exception as exc:
        results.put(exc)
    else:
        results.put((latencies.tobytes(), bad))
    release.wait(end / 1e9 - time.monotonic() + 30)


class PythonLoad:
    """The load from Python processes, where there is no C compiler: one for
    up to 7 connections, two from 8 (epoll in each, for many)."""

    label = "Python"

    def __init__(self, address, connections, mode, start, end):
        self.parallel = 1 if connections < 8 else 2
        context = multiprocessing.get_context("fork")
        self.queue, self.release = context.Queue(), context.Event()
        shares = [
            connections // self.parallel + (i < connections % self.parallel)
            for i in range(self.parallel)
        ]
        self.workers = [
            context.Process(
                target=driver,
                args=(address, n, start, end, mode, self.queue, self.release),
            )
            for n in shares
        ]
        for worker in self.workers:
            worker.start()
        self.pids = [worker.pid for worker in self.workers]
        self.timeout = (end - time.monotonic_ns()) / 1e9 + 30

    def results(self) -> tuple[int, int, int, int]:
        """Replies, bad replies, median and 99th percentile latency (ns)."""
        self.release.set()
        latencies, bad = array.array("q"), 0
        for _ in self.workers:
            result = self.queue.get(timeout=self.timeout)
            if isinstance(result, Exception):
                raise RuntimeError(f"the load generator failed: {result!r}")
            latencies.frombytes(result[0])
            bad += result[1]
        ordered = sorted(latencies)
        if not ordered:
            return 0, bad, 0, 0
        return len(ordered), bad, percentile(ordered, 0.5), percentile(ordered, 0.99)

    def stop(self) -> None:
        self.release.set()
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()


def percentile(ordered, fraction):
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run_load(server, connections, mode, seconds, warmup, generator):
    """Drive `server` with `generator` (CLoad or PythonLoad, as a callable of
    the address, connections, mode, start and end); the figures of one run."""
    start = time.monotonic_ns() + int((warmup + 0.2) * 1e9)
    end = start + int(seconds * 1e9)
    load = generator(server.address, connections, mode, start, end)
    try:
        # The CPU of both sides over the measured window only.
        sleep_until(start)
        server_before, load_before = server.cpu(), load_cpu(load)
        sleep_until(end)
        server_after, load_after = server.cpu(), load_cpu(load)
        replies, bad, p50, p99 = load.results()
    finally:
        load.stop()
    if not replies:
        raise RuntimeError(f"{server.name}: no replies")
    user = server_after[0] - server_before[0]
    system = server_after[1] - server_before[1]
    server_cores = (user + system) / seconds
    generator = (load_after - load_before) / seconds
    room = min(load.parallel, max(CORES - server_cores, 0.1))
    return {
        "rps": replies / seconds,
        "p50_ms": p50 / 1e6,
        "p99_ms": p99 / 1e6,
        "bad_replies": bad,
        "server_cpu": server_cores,  # cores kept busy
        "server_us": (user + system) / replies * 1e6,  # CPU per reply
        "server_user_us": user / replies * 1e6,
        "server_system_us": system / replies * 1e6,
        "generator_us": generator * seconds / replies * 1e6,
        "generator_busy": generator / room,  # of the CPU the server left it
    }


def load_cpu(load) -> float:
    return sum(sum(tree_cpu(pid)) for pid in load.pids)


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
    # name, connections, the generator's mode
    ("1 connection, persistent", 1, "persistent"),
    ("8 connections, persistent", 8, "persistent"),
    ("64 connections, persistent", 64, "persistent"),
    ("1 client, connection per request", 1, "per-request"),
    ("8 clients, connection per request", 8, "per-request"),
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
    if name in ("ours", "before"):
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


def build(workdir, name, *flags):
    """A C peer, compiled from scripts/peers/NAME.c with the system's C
    compiler; None, with a message, where it cannot be."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print(f"no C compiler (cc): no {name}", file=sys.stderr)
        return None
    binary = os.path.join(workdir, name)
    source = str(PEERS / f"{name}.c")
    built = subprocess.run(
        [compiler, "-O2", *flags, "-o", binary, source], capture_output=True, text=True
    )
    if built.returncode != 0:
        print(f"{name}.c did not build:\n{built.stderr}", file=sys.stderr)
        return None
    return binary


def choose_generator(workdir, python_load):
    """CLoad with the built generator, or PythonLoad where it cannot be built;
    and which it is, "C" or "Python"."""
    binary = None if python_load else build(workdir, "load", "-pthread")
    if binary is None:
        print(
            "the load comes from Python processes, which saturate before the "
            "fastest servers: the rows are marked",
            file=sys.stderr,
        )
        return PythonLoad, PythonLoad.label
    return (lambda *where: CLoad(binary, *where)), CLoad.label


def run(args):
    workdir = tempfile.mkdtemp(prefix="bench-")
    c_server = build(workdir, "epoll_server")
    if c_server is not None:
        SERVERS["c"] = [c_server]
    generator, label = choose_generator(workdir, args.python_load)
    if not hasattr(os, "fork"):
        SERVERS.pop("workers")
    if args.against is not None:  # the same server from another checkout
        TREES["before"] = args.against
        SERVERS["before"] = SERVERS["ours"]
        SERVER_NAMES["before"] = NTP_NAMES["before"] = "before"
    wanted = (
        set(args.only or SERVERS) | {"ours"} | ({"before"} if args.against else set())
    )
    servers = [name for name in SERVERS if name in wanted]
    memory_ok = raise_file_limit(IDLE_CONNECTIONS + 200)
    if not memory_ok:
        print(
            f"open-file limit too low for {MEMORY}; skipping that run", file=sys.stderr
        )
    workloads = WORKLOADS if "tcp" in args.parts else []
    memory_ok = memory_ok and "memory" in args.parts
    samples = {name: {server: [] for server in servers} for name, _, _ in workloads}
    memory = {server: [] for server in servers}
    ntp_servers = [n for n in NTP_NAMES if n in wanted | {"chronyd"}]
    if not shutil.which("chronyd"):
        print("chronyd is not installed; no chronyd row", file=sys.stderr)
        ntp_servers.remove("chronyd")
    if "ntp" not in args.parts:
        ntp_servers = []
    ntp = {server: [] for server in ntp_servers}
    for number in range(args.rounds):
        order = servers[number % len(servers) :] + servers[: number % len(servers)]
        for name, connections, mode in workloads:
            for server_name in order:
                progress(number, args.rounds, SERVER_NAMES[server_name], name)
                with Server(server_name) as server:
                    check_replies(server)
                    samples[name][server_name].append(
                        run_load(
                            server,
                            connections,
                            mode,
                            args.seconds,
                            args.warmup,
                            generator,
                        )
                    )
        if memory_ok:
            for server_name in [s for s in order if s != "workers"]:  # one process
                progress(number, args.rounds, SERVER_NAMES[server_name], MEMORY)
                with Server(server_name) as server:
                    memory[server_name].append(idle_memory(server, IDLE_CONNECTIONS))
        name, clients, mode = NTP_WORKLOAD
        turn = number % max(1, len(ntp_servers))
        for server_name in ntp_servers[turn:] + ntp_servers[:turn]:
            progress(number, args.rounds, NTP_NAMES[server_name], name)
            with start_ntp_server(server_name, workdir) as server:
                ntp[server_name].append(
                    run_load(
                        server, clients, mode, args.seconds, args.warmup, generator
                    )
                )
    shutil.rmtree(workdir, ignore_errors=True)
    return summarise(args, label, samples, memory, ntp)


def progress(number, rounds, server, workload):
    print(
        f"round {number + 1} of {rounds}: {server}, {workload}",
        file=sys.stderr,
        flush=True,
    )


def spread(runs, key):
    """How far the rounds lie apart: (largest - smallest) / median."""
    values = [run[key] for run in runs]
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def summary(runs, generator):
    """The median of every figure over the rounds, the spread of the rate and
    of the CPU per reply, and whether the generator was the limit."""
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return figures | {
        "rps_spread": spread(runs, "rps"),
        "server_us_spread": spread(runs, "server_us"),
        "generator": generator,
        "generator_bound": figures["generator_busy"] >= GENERATOR_BOUND,
        "rounds": runs,
    }


def compare(results, reference):
    """Each server's CPU per reply ÷ the reference's, and timeservice's rate
    ÷ each peer's; None where either row was generator-bound."""
    base = results.get(reference)
    for figures in results.values():
        figures["server_us_to_reference"] = (
            quotient(figures["server_us"], base["server_us"]) if base else None
        )
    ours = results["ours"]
    return {
        peer: {
            "rps": (
                None
                if ours["generator_bound"] or figures["generator_bound"]
                else quotient(ours["rps"], figures["rps"])
            ),
            "server_us": quotient(ours["server_us"], figures["server_us"]),
        }
        for peer, figures in results.items()
        if peer != "ours"
    }


def quotient(a, b):
    """a ÷ b, or None where b is 0 (a CPU time under one clock tick)."""
    return a / b if b else None


def summarise(args, generator, samples, memory, ntp):
    results, ratios = {}, {}
    for name, runs_by_server in samples.items():
        results[name] = {
            server: summary(runs, generator) for server, runs in runs_by_server.items()
        }
        ratios[name] = compare(results[name], "c")
    memory_results = {
        server: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        | {"rounds": runs}
        for server, runs in memory.items()
        if runs
    }
    ntp_results = {server: summary(runs, generator) for server, runs in ntp.items()}
    return {
        "machine": machine(),
        "command": " ".join(["python", "scripts/bench.py"] + args.argv),
        "generator": generator,
        "generator_bound_at": GENERATOR_BOUND,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "workloads": results,
        "ratios": ratios,
        "memory": memory_results,
        "ntp": ntp_results,
        "ntp_ratios": compare(ntp_results, "chronyd") if ntp_results else {},
    }


HEADINGS = (
    f"{'':<34} {'':<12} {'req/s':>8} {'':>4} {'p99':>6}  "
    f"{'server CPU per reply, µs':<27} {'gen':>4}",
    f"{'workload':<34} {'server':<12} {'median':>8} {'±':>4} {'ms':>6}  "
    f"{'user':>5} {'sys':>5} {'total':>5} {'±':>4} {'÷ ref':>5} {'busy':>4}",
)


def row(name, server, r):
    """One workload and server: rate, tail, CPU per reply, the generator."""
    reference = r["server_us_to_reference"]
    marks = " ".join(
        mark
        for mark, shown in (
            ("generator-bound", r["generator_bound"]),
            ("Python load", r["generator"] == "Python"),
        )
        if shown
    )
    return (
        f"{name:<34} {server:<12} {r['rps']:>8,.0f} {r['rps_spread']:>4.0%}"
        f" {r['p99_ms']:>6.3f}  {r['server_user_us']:>5.1f}"
        f" {r['server_system_us']:>5.1f} {r['server_us']:>5.1f}"
        f" {r['server_us_spread']:>4.0%}"
        f" {'' if reference is None else f'{reference:.2f}':>5}"
        f" {r['generator_busy']:>4.0%} {marks}"
    ).rstrip()


def ratio(value):
    return "gen-bound" if value is None else f"{value:.2f}x"


def table(report):
    """The report as text: one row per workload and server, then the ratios."""
    m = report["machine"]
    out = [
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['kernel']}",
        f"load: {LOAD_NAMES[report['generator']]}",
        f"median of {report['rounds']} interleaved rounds of {report['seconds']:g} s"
        " each; ± the spread between rounds, (largest - smallest) ÷ median",
        "",
        *HEADINGS,
    ]
    for name, by_server in report["workloads"].items():
        for i, (server, r) in enumerate(by_server.items()):
            out.append(row(name if i == 0 else "", SERVER_NAMES[server], r))
    peers = list(next(iter(report["ratios"].values()), []))
    heading = "".join(f" {SERVER_NAMES[peer]:>12}" for peer in peers)
    if peers:
        out += ["", f"{'timeservice req/s ÷ peer req/s':<34}{heading}"]
    for name, by_peer in report["ratios"].items():
        out.append(
            f"{name:<34}" + "".join(f" {ratio(by_peer[p]['rps']):>12}" for p in peers)
        )
    if "before" in peers:  # an A/B run: what the change costs, per reply
        out += ["", f"{'timeservice CPU per reply ÷ before':<34}"]
        for name, by_peer in report["ratios"].items():
            out.append(f"{name:<34} {by_peer['before']['server_us']:>12.2f}x")
    if report["memory"]:
        heading = f"{MEMORY}, RSS"
        out += ["", f"{heading:<34} {'server':<12} {'idle MiB':>8} {'+ MiB':>7}"]
        for server, r in report["memory"].items():
            out.append(
                f"{'':<34} {SERVER_NAMES[server]:<12}"
                f" {r['idle_mib']:>8.1f} {r['held_mib']:>7.1f}"
            )
    if report["ntp"]:
        out += ["", *HEADINGS]
        for i, (server, r) in enumerate(report["ntp"].items()):
            out.append(row(NTP_WORKLOAD[0] if i == 0 else "", NTP_NAMES[server], r))
        for peer, figures in report["ntp_ratios"].items():
            out.append(
                f"{f'timeservice req/s ÷ {NTP_NAMES[peer]} req/s':<47}"
                f" {ratio(figures['rps']):>8}"
            )
            if peer == "before":
                out.append(
                    f"{'timeservice CPU per reply ÷ before':<47}"
                    f" {figures['server_us']:>7.2f}x"
                )
    bad = sum(
        r["bad_replies"] for by in report["workloads"].values() for r in by.values()
    ) + sum(r["bad_replies"] for r in report["ntp"].values())
    if bad:
        out += ["", f"WARNING: {bad} replies were not a timestamp line"]
    out += [
        "",
        "server CPU per reply: user and system time of the server's processes and",
        "threads over the measured seconds, ÷ the replies; ÷ ref: ÷ the C server's",
        "(chronyd's for NTP). gen busy: the generator's CPU time, ÷ what it could",
        "have had (its threads, at most the cores the server left free);",
        f"generator-bound from {GENERATOR_BOUND:.0%}: the generator, not the server,",
        "set that rate, and no rate ratio is made of it.",
    ]
    return "\n".join(out)


LOAD_NAMES = {
    "C": "scripts/peers/load.c, a thread per connection in a closed loop",
    "Python": "Python processes (no C compiler), epoll over many connections",
}


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
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="drive the load from Python processes, as where there is no C compiler",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="also measure the server of another checkout, as 'before', "
        "interleaved with this one: an A/B run",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        metavar="NAME,...",
        help="only these servers besides ours: workers, seed, asyncio, c, chronyd",
    )
    parser.add_argument(
        "--parts",
        type=lambda text: set(text.split(",")),
        default={"tcp", "memory", "ntp"},
        metavar="PART,...",
        help="what to measure: tcp, memory, ntp (default: all)",
    )
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
