"""--workers N: several server processes on the same sockets, supervised."""

from __future__ import annotations

import os
import re
import signal
import socket

import pytest
from conftest import (
    TIMEOUT,
    children,
    needs_sigterm,
    readline_within,
    recent,
    server_process,
    timestamp,
    until,
)

from timeservice import client
from timeservice.host import capabilities
from timeservice.operations import cpu
from timeservice.programs import server as server_program
from timeservice.wire import ntp

pytestmark = [
    needs_sigterm,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="workers are forked (POSIX)"),
]
STARTED = re.compile(r"worker (\d+) started, pid (\d+)")


def cpus_of(pid: int) -> str:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list:"):
                return line.split()[1]
    raise AssertionError("no Cpus_allowed_list")


def ask_many(port: int, count: int) -> None:
    for _ in range(count):
        with client.TimeClient("127.0.0.1", port) as asking:
            recent(asking.get_time())


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_two_workers_serve_every_protocol_and_stop_together():
    options = (
        "--workers",
        "2",
        "--daytime",
        "0",
        "--ntp",
        "0",
        "--local-stratum",
        "10",
    )
    cpus = sorted(capabilities.allowed_cpus())
    pinning = len(cpus) >= 2 and capabilities.gil_enabled()  # --cpu auto: one each
    with server_process("0", "-v", *options) as (process, port):
        pids, pinned = set(), []
        for _ in range(60):  # the parent's and the workers' lines, interleaved
            if len(pids) == 2 and (len(pinned) == 2 or not pinning):
                break
            line = readline_within(process.stderr)
            if started := STARTED.search(line):
                pids.add(int(started[2]))
            if on_cpu := re.search(r"serving on CPU (\d+)", line):
                pinned.append(int(on_cpu[1]))
        daytime = int(
            until(process.stdout, re.compile(r"daytime on \S+ port (\d+)"))[1]
        )
        ntp_port = int(until(process.stdout, re.compile(r"NTP on \S+ port (\d+)"))[1])
        assert readline_within(process.stdout) == "Serving from 2 worker processes.\n"
        assert children(process.pid) == pids
        if pinning:
            assert sorted(pinned) == cpus[:2]
            assert sorted(cpus_of(pid) for pid in pids) == [str(c) for c in cpus[:2]]
        ask_many(port, 20)
        assert client.ask_daytime("127.0.0.1", daytime, udp=True).error < 1
        assert client.ask_ntp("127.0.0.1", ntp_port).error < 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert "SIGTERM received, stopping 2 worker(s)" in log
    assert "Traceback" not in log
    for pid in pids:  # reaped by the parent, gone
        assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_a_worker_that_dies_is_replaced_and_logged():
    with server_process("0", "-v", "--workers", "2") as (process, port):
        pids = {int(until(process.stderr, STARTED)[2]) for _ in range(2)}
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)  # ours: a child of the server we started
        ended = until(process.stderr, re.compile(r"worker (\d+) \(pid (\d+)\) ended"))
        assert int(ended[2]) == victim
        replacement = int(until(process.stderr, STARTED)[2])
        assert children(process.pid) == pids - {victim} | {replacement}
        ask_many(port, 10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert "Traceback" not in log


def test_one_connection_is_served_by_one_worker_only():
    """The workers share one listening socket, set non-blocking: those that
    lose the race go back to waiting. Pipelined lines all come back."""
    with server_process("0", "-q", "--workers", "2") as (process, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"send time\n" * 200)
            reader = sock.makefile("rb")
            for _ in range(200):
                timestamp(reader.readline())
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--workers", "0"], "must be above 0"),
        (["--workers", "2", "--cpu", "0"], "use auto or off"),
    ],
)
def test_worker_options_that_do_not_fit(argv, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        server_program.main(argv)
    assert exit_info.value.code == 2
    assert problem in capsys.readouterr().err


def test_worker_cpus():
    cpus = sorted(capabilities.allowed_cpus())
    assert cpu.worker_cpus("off", 3) == [None, None, None]
    if len(cpus) >= 2 and capabilities.gil_enabled():
        assert cpu.worker_cpus("auto", 3) == [cpus[0], cpus[1], cpus[2 % len(cpus)]]
    else:
        assert cpu.worker_cpus("auto", 2) == [None, None]


@pytest.mark.slow
def test_each_worker_keeps_its_own_limits_so_a_source_gets_up_to_n_times():
    """Documented, and measured here: the kernel hands each datagram to
    whichever worker reads first, and each has its own table."""
    options = ("0", "--workers", "2", "--ntp", "0", "--local-stratum", "10", "-q")
    with server_process(*options) as (process, _):
        port = int(until(process.stdout, re.compile(r"NTP on \S+ port (\d+)"))[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            flood.settimeout(0.3)
            for _ in range(400):
                flood.sendto(ntp.request_packet(0), ("127.0.0.1", port))
            got = 0
            for _ in range(1000):
                try:
                    flood.recv(512)
                except TimeoutError:
                    break
                got += 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    print(f"two workers: {got} of 400 datagrams from one source got a reply")
    # Each worker's bound: its burst of 16 and a quarter of the rest, at random.
    assert 16 <= got <= 2 * 16 + 0.35 * (400 - 16)
