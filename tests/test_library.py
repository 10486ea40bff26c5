"""The library inside a host program: what a program may set or do around it."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import types
from datetime import datetime, timedelta, timezone

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    RecordingServer,
    bounded,
    needs_sigterm,
    server_process,
    timestamp,
)

from timeservice.client import TimeClient
from timeservice.clock.system import SystemClock, time_line
from timeservice.host import capabilities
from timeservice.operations import cpu, service
from timeservice.programs import server as server_program
from timeservice.server import TimeRequestHandler, TimeServer
from timeservice.transport.pool import CONNECTION_THREAD, ThreadPoolMixIn
from timeservice.transport.registry import WATCHDOG_THREAD, abort, drain, drained
from timeservice.wire.errors import ReplyError


@contextlib.contextmanager
def default_timeout(seconds: float):
    """socket.setdefaulttimeout() for the block, as a host program might set it."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def test_a_default_socket_timeout_in_the_host_program_changes_nothing(
    start_server, connect
):
    # With a default timeout, accepted sockets are non-blocking underneath;
    # a reader over the descriptor that finds no byte yet must not take
    # that for EOF. The second request comes after the handler has gone
    # back to reading an empty socket.
    with default_timeout(5):
        server = start_server()
        connection = connect(server)
        timestamp(connection.ask())
        timestamp(connection.ask())


def test_the_empty_host_means_every_ipv4_interface(start_server, connect):
    server = start_server("")
    assert server.server_address[0] == "0.0.0.0"
    timestamp(connect(server).ask())  # over 127.0.0.1


class ShiftedClock(SystemClock):
    """The system clock an hour ahead, as a subclass would shift it."""

    def __call__(self) -> datetime:
        return super().__call__() + timedelta(hours=1)


def test_a_subclass_of_the_system_clock_is_used(start_server, connect):
    ahead = datetime.now(timezone.utc) + timedelta(minutes=59)
    line = time_line(ShiftedClock(utc=True))
    assert timestamp(line) > ahead
    server = start_server(clock=ShiftedClock())
    assert timestamp(connect(server).ask()) > ahead


# The client after an error


def test_after_a_timeout_the_client_does_not_read_the_late_answer(start_server):
    released = threading.Event()
    old = datetime(2000, 1, 1, tzinfo=timezone.utc)

    def clock():
        if not released.is_set():
            released.wait(TIMEOUT)
            return old  # the late answer to the request that timed out
        return datetime.now(timezone.utc)

    server = start_server(clock=clock)
    time_client = TimeClient(*server.server_address[:2], timeout=0.2)
    with time_client:
        with pytest.raises(TimeoutError):
            time_client.get_time()
        released.set()
        with pytest.raises(ValueError, match="closed after an error"):
            time_client.get_time()
        time_client.connect()  # a fresh connection: no late answer on it
        assert datetime.fromisoformat(time_client.get_time()) > old


def test_after_an_err_reply_the_client_must_connect_again(start_server):
    failing = threading.Event()
    failing.set()

    def clock():
        if failing.is_set():
            raise OSError("no clock")
        return datetime.now(timezone.utc)

    server = start_server(clock=clock)
    with TimeClient(*server.server_address[:2]) as time_client:
        with pytest.raises(ReplyError, match="clock unavailable"):
            time_client.measure_offset(3)
        with pytest.raises(ValueError, match="closed after an error"):
            time_client.get_time()
        failing.clear()
        time_client.connect()
        timestamp(f"{time_client.get_time()}\n".encode())


# Threads, the cap and shutdown


def no_threads_named(monkeypatch, name: str) -> None:
    """Make threads of that name fail to start, as at a process limit."""
    real_start = threading.Thread.start

    def start(thread):
        if thread.name == name:
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_a_thread_that_cannot_start_gets_err_busy_and_shutdown_stays_clean(
    start_server, connect, monkeypatch, caplog
):
    server = start_server()
    first = connect(server)
    timestamp(first.ask())  # its thread runs and stays
    no_threads_named(monkeypatch, CONNECTION_THREAD)
    refused = connect(server)
    assert refused.line() == b"ERR busy\n"
    assert refused.line() == b""
    timestamp(first.ask())  # the server goes on
    monkeypatch.undo()
    assert "cannot start a thread" in caplog.text
    # The fixture then stops the server and fails on an error or a thread left.


def test_err_busy_is_not_overtaken_by_a_reset(start_server, connect):
    # Closing a socket with unread input sends a reset and drops what has
    # not been acknowledged, so a line lost on the way is never sent again.
    # The refused socket must instead be half-closed and drained: the
    # client can still send after the server is done with it.
    server = start_server(max_connections=1)
    timestamp(connect(server).ask())
    late = connect(server)
    late.send(b"send time\n" * 1000)
    assert late.line() == b"ERR busy\n"
    assert late.line() == b""
    server.wait_finished()  # the serving loop is done with the refused socket
    late.send(b"send time\n")  # no reset: BrokenPipeError on the old close


def test_deadlines_hold_under_handle_request(connect):
    with RecordingServer(("127.0.0.1", 0), idle_timeout=0.2) as server:
        serving = threading.Thread(target=server.handle_request)
        serving.start()
        connection = connect(server)
        assert connection.line() == b"ERR timeout\n"
        assert connection.line() == b""
        serving.join(TIMEOUT)
        server.wait_finished()


@pytest.mark.skipif(
    not capabilities.SOCKETS_ARE_FILES,
    reason="the listening socket blocks where its descriptor is not a file's",
)
def test_one_wake_up_accepts_the_connections_already_waiting(connect):
    """Up to `batch` of them; the rest stay in the backlog for the next."""
    with RecordingServer(("127.0.0.1", 0)) as server:
        server.batch = 2
        # A connection is in the backlog once connect() returns (loopback).
        waiting = [connect(server) for _ in range(3)]
        bounded(server.handle_request)  # one wake-up: the first two
        for connection in waiting[:2]:
            timestamp(connection.ask())
            connection.close()
        left, _ = server.socket.accept()  # the third, still waiting
        left.close()
        assert waiting[2].line() == b""
        server.wait_finished(2)


def test_deadlines_hold_between_shutdown_and_server_close(start_server, connect):
    server = start_server(idle_timeout=0.2)
    connection = connect(server)
    timestamp(connection.ask())
    bounded(server.shutdown)
    assert connection.line() == b"ERR timeout\n"
    assert connection.line() == b""


# Settings


def test_settings_are_per_server_and_checked():
    with TimeServer(("127.0.0.1", 0), idle_timeout=3.0, thread_idle=1.0) as server:
        assert (server.idle_timeout, server.thread_idle) == (3.0, 1.0)
    assert (TimeServer.idle_timeout, TimeServer.thread_idle) == (60.0, 10.0)
    with pytest.raises(TypeError, match="unknown setting"):
        TimeServer(("127.0.0.1", 0), idle_timout=3.0)


# Several servers in one service


def test_a_service_serves_several_servers_and_stops_them_together(connect):
    servers = [RecordingServer(("127.0.0.1", 0)) for _ in range(2)]
    both = service.Service(servers)
    serving = threading.Thread(target=both.serve_forever, args=(0.01,))
    serving.start()
    try:
        connections = [connect(server) for server in servers]
        for connection in connections:
            timestamp(connection.ask())
    finally:
        bounded(both.stop)
        serving.join(TIMEOUT)
    assert not serving.is_alive()
    for server, connection in zip(servers, connections, strict=True):
        assert server.socket.fileno() == -1
        assert connection.line() == b"ERR server shutting down\n"
    with pytest.raises(ValueError):
        service.Service([])


# The CPU: the command line's choice, never the library's

needs_affinity = pytest.mark.skipif(
    not capabilities.CPU_AFFINITY or len(capabilities.allowed_cpus()) < 2,
    reason="needs CPU affinity and two CPUs",
)


@needs_affinity
def test_the_library_leaves_the_cpus_alone(start_server, connect):
    seen = []

    def clock():
        seen.append(os.sched_getaffinity(0))
        return datetime.now(timezone.utc)

    server = start_server(clock=clock)
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


# The portable paths, chosen by capability


def test_the_portable_switch_turns_every_capability_off():
    code = (
        "from timeservice.host import capabilities as c;"
        "import timeservice.server as s;"
        "print(c.SOCKETS_ARE_FILES, c.CPU_AFFINITY, c.open_file_limit(),"
        " s.TimeRequestHandler.fd_reader)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TIMESERVICE_PORTABLE": "1"},
    )
    assert result.stdout == "False False None False\n", result.stderr


@needs_sigterm
def test_the_verbose_log_says_which_paths_were_chosen():
    with server_process("0", "-v") as (process, _):
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert f"platform: {capabilities.describe()}" in log


def test_the_makefile_reader_serves_the_protocol(start_server, connect):
    handler = type("MakefileHandler", (TimeRequestHandler,), {"fd_reader": False})
    server = start_server(handler_class=handler)
    connection = connect(server)
    connection.send(b"send time\nhello\n" + b"x" * 300 + b"\n")
    timestamp(connection.line())
    assert connection.line().startswith(b"ERR unknown request")
    assert connection.line() == b"ERR line too long\n"
    assert connection.line() == b""


def test_a_subclass_may_write_to_wfile_and_finish_flushes_it(start_server, connect):
    class Greeter(TimeRequestHandler):
        def line_received(self, request: bytes) -> None:
            self.wfile.write(b"hello " + request + b"\n")  # buffered, not flushed

    server = start_server(handler_class=Greeter)
    connection = connect(server)
    connection.send(b"one\ntwo\n")
    connection.sock.shutdown(socket.SHUT_WR)  # EOF: the handler finishes
    assert connection.line() == b"hello one\n"
    assert connection.line() == b"hello two\n"
    assert connection.line() == b""


def test_without_a_watchdog_a_connection_is_refused(start_server, connect, monkeypatch):
    server = start_server()
    no_threads_named(monkeypatch, WATCHDOG_THREAD)
    refused = connect(server)
    assert refused.line() == b"ERR busy\n"
    monkeypatch.undo()
    timestamp(connect(server).ask())


def test_the_pool_alone_closes_what_it_cannot_serve(monkeypatch):
    class PoolOnly(ThreadPoolMixIn, socketserver.TCPServer):
        pass

    with PoolOnly(("127.0.0.1", 0), TimeRequestHandler) as server:
        no_threads_named(monkeypatch, CONNECTION_THREAD)
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
            server.handle_request()
            assert sock.recv(100) == b""


def test_a_handler_that_arrives_while_closing_is_told_so(start_server):
    server = start_server()
    server.shutdown()
    server.server_close()
    told = []
    handler = types.SimpleNamespace(
        request=None, expire=lambda reason, grace: told.append(reason)
    )
    server.track(handler)
    assert told == ["server shutting down"]


def reset_pair() -> socket.socket:
    """A socket whose peer sent a byte and then a TCP reset."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        sock, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sendall(b"x")
    peer.close()
    return sock


def test_socket_helpers_never_raise_on_a_reset_or_closed_socket():
    with reset_pair() as sock:
        drain(sock, TIMEOUT)
    with reset_pair() as sock:
        sock.setblocking(False)
        select.select([sock], [], [], TIMEOUT)
        assert drained(sock)
    sock.close()
    abort(sock)  # closed: nothing to do, nothing raised


def test_drained_stops_after_a_bounded_read():
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        assert not drained(left)  # nothing yet, no EOF
        right.sendall(b"x" * 10_000)
        assert not drained(left, most=1, chunk=100)  # more to read next time
        right.close()
        assert drained(left)  # the rest, then EOF


def test_capabilities_say_no_when_the_platform_does(monkeypatch):
    def fail(*args):
        raise OSError("not here")

    monkeypatch.setattr(capabilities, "os", types.SimpleNamespace(fstat=fail))
    assert capabilities._sockets_are_files() is False
    monkeypatch.setattr(capabilities, "open", fail, raising=False)
    assert capabilities.current_cpu() is None
