"""The load: what the servers are asked, the workloads, and the two
generators that drive them, the C one (scripts/peers/load.c, a thread per
connection in a closed request/reply loop) and, where there is no C compiler,
Python processes running the cheapest loops this can be written as in Python.
"""

from __future__ import annotations

import array
import multiprocessing
import re
import select
import socket
import subprocess
import time

REQUEST = b"send time\n"
REPLY = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d\n")
REPLY_BYTES = len(b"2026-11-27T10:15:42.000000+01:00\n")  # every timestamp line
IDLE_CONNECTIONS = 1000

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
NTP_REQUEST = bytes([0x23]) + bytes(39) + bytes(range(1, 9))  # version 4, client
LOST_AFTER = 10**9  # ns without a reply: the datagram is counted lost, sent again


class CLoad:
    """The C load generator, running one workload: a thread per connection."""

    label = "C"

    def __init__(self, binary, address, connections, mode, start, end, *more):
        self.parallel = connections  # threads that can be on a CPU at once
        figures = (address[1], connections, start, end)
        self.process = subprocess.Popen(
            [binary, mode, *map(str, figures), *more],
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
    except Exception as exc:  # every failure goes to the parent
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
                failed = f"the load generator failed: {result!r}"
                raise RuntimeError(failed)
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
