"""Measuring: the CPU time of a process tree, read from /proc; the figures of
one run of a load against a server (its rate, its latency, and the CPU each
side used over the measured window only); the memory a server adds to hold
idle connections; the check that it answers with a timestamp line; and the
open-file limit the idle connections need.
"""

from __future__ import annotations

import os
import resource
import socket
import time

from .load import REPLY, REPLY_BYTES, ask

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))


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


def raise_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or soft >= needed
