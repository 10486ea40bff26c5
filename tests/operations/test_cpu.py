"""The CPU: the command line's choice, never the library's."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import pytest
from conftest import TIMEOUT, moments, server_process, timestamp

from timeservice.client import TimeClient
from timeservice.host import capabilities
from timeservice.operations import cpu
from timeservice.programs import server as server_program

needs_affinity = pytest.mark.skipif(
    not capabilities.CPU_AFFINITY or len(capabilities.allowed_cpus()) < 2,
    reason="needs CPU affinity and two CPUs",
)


@needs_affinity
def test_the_library_leaves_the_cpus_alone(start_server, connect):
    seen = []

    def clock():
        seen.append(os.sched_getaffinity(0))
        return datetime.now(UTC)

    server = start_server(clock=moments(clock))
    timestamp(connect(server).ask())
    assert seen == [os.sched_getaffinity(0)]


@needs_affinity
def test_kept_on_cpu_holds_the_threads_it_starts_and_gives_the_cpus_back():
    allowed = os.sched_getaffinity(0)
    seen = []

    def look():
        seen.append(os.sched_getaffinity(0))

    with cpu.kept_on_cpu(max(allowed)):
        thread = threading.Thread(target=look)
        thread.start()
        thread.join(TIMEOUT)
    assert seen == [{max(allowed)}]
    assert os.sched_getaffinity(0) == allowed


def test_a_refused_cpu_is_a_warning_not_an_error(monkeypatch, caplog):
    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(capabilities, "CPU_AFFINITY", True)
    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)
    ran = []
    with cpu.kept_on_cpu(0):
        ran.append(True)
    assert ran
    assert "cannot keep to CPU 0 (Invalid argument); using every CPU" in caplog.text


def test_a_platform_without_affinity_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(capabilities, "CPU_AFFINITY", False)
    with cpu.kept_on_cpu(1):
        pass
    assert "cannot keep to CPU 1 (this platform has no CPU affinity)" in caplog.text


@pytest.mark.parametrize(
    "choice, cpus, gil, chosen",
    [
        ("off", {0, 1}, True, None),
        ("auto", {0, 1}, True, "current"),
        ("auto", {0, 1}, False, None),  # free-threaded: let the threads run in parallel
        ("auto", {3}, True, None),  # one CPU: nothing to choose
        ("auto", set(), True, None),  # no affinity on this platform
        (1, {0, 1}, True, 1),
        (1, set(), True, 1),  # kept_on_cpu() says it cannot
    ],
)
def test_choose_cpu(monkeypatch, choice, cpus, gil, chosen):
    monkeypatch.setattr(capabilities, "allowed_cpus", lambda: cpus)
    monkeypatch.setattr(capabilities, "gil_enabled", lambda: gil)
    monkeypatch.setattr(capabilities, "current_cpu", lambda: 1)
    assert cpu.choose_cpu(choice) == (1 if chosen == "current" else chosen)


@needs_affinity
@pytest.mark.parametrize("option", ["0", "1", "off"])
def test_the_server_process_keeps_to_the_cpu_it_is_told(option):
    with server_process("0", "-q", "--cpu", option) as (process, port):
        with TimeClient("127.0.0.1", port) as time_client:
            time_client.get_time()
        cpus = os.sched_getaffinity(process.pid)
        process.terminate()
        assert process.wait(TIMEOUT) == 0
    assert cpus == (os.sched_getaffinity(0) if option == "off" else {int(option)})


def test_a_cpu_the_process_may_not_use_is_a_usage_error(capsys):
    if not capabilities.allowed_cpus():
        pytest.skip("no CPU affinity here")
    with pytest.raises(SystemExit) as exited:
        server_program.main(["--cpu", "4096"])
    assert exited.value.code == 2
    assert "--cpu 4096: this process may use CPUs" in capsys.readouterr().err
