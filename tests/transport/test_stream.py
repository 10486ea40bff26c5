"""The stream transports: threads, the cap, deadlines, the settings and a
clean close."""

from __future__ import annotations

import select
import socket
import socketserver
import struct
import threading
import types

import pytest
from conftest import TIMEOUT, RecordingServer, bounded, timestamp

from timeservice.host import capabilities
from timeservice.server import TimeRequestHandler, TimeServer
from timeservice.transport.pool import CONNECTION_THREAD, ThreadPoolMixIn
from timeservice.transport.registry import WATCHDOG_THREAD, abort, drain, drained

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
    refused.send(b"send")  # a line in parts needs a thread to wait for the rest
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


# The parts, and the paths other platforms take


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
        request=None, expire=lambda cause, grace, first: told.append((cause, first))
    )
    server.track(handler)
    assert told == [("shutdown", True)]


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
