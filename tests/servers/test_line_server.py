"""Every protocol rule, end to end over real loopback sockets."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import TIMEOUT, TakenOver, moments, timestamp

from timeservice.host import capabilities
from timeservice.server import TimeRequestHandler, TimeServer
from timeservice.transport.pool import CONNECTION_THREAD
from timeservice.transport.registry import connection_cap

UNKNOWN = b"ERR unknown request, expected 'send time'\n"


def reset(connection) -> None:
    """Close with a TCP reset instead of a FIN."""
    connection.sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    connection.close()


def test_send_time_gets_the_current_time(server, connect):
    before = datetime.now(UTC)
    moment = timestamp(connect(server).ask())
    assert before <= moment <= datetime.now(UTC)


def test_reply_uses_the_servers_clock(start_server, connect):
    moment = datetime(2026, 11, 27, 10, 15, 42, 0, timezone(-timedelta(hours=5)))
    server = start_server(clock=moments(lambda: moment))
    assert connect(server).ask() == b"2026-11-27T10:15:42.000000-05:00\n"


def test_one_connection_carries_many_requests(server, connect):
    connection = connect(server)
    moments = [timestamp(connection.ask()) for _ in range(20)]
    assert moments == sorted(moments)


def test_pipelined_requests_are_answered_in_order(server, connect):
    connection = connect(server)
    connection.send(b"send time\n" * 50 + b"bogus\n" + b"send time\n")
    replies = [connection.line() for _ in range(52)]
    moments = [timestamp(line) for line in replies[:50]]
    assert moments == sorted(moments)
    assert replies[50] == UNKNOWN
    timestamp(replies[51])


def test_a_request_split_over_many_packets_is_answered_once(server, connect):
    connection = connect(server)
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in (b"se", b"nd", b" ", b"ti", b"me", b"\r", b"\n"):
        connection.send(piece)
    timestamp(connection.line())
    assert connection.ask(b"nonsense\n") == UNKNOWN  # nothing else was queued


@pytest.mark.parametrize(
    "request_",
    [b"send time\r\n", b"SEND TIME\n", b"  Send \t Time  \r\n", b"send\ttime\n"],
)
def test_case_spacing_and_crlf_are_accepted(server, connect, request_):
    timestamp(connect(server).ask(request_))


@pytest.mark.parametrize(
    "request_, reply",
    [
        (b"what time is it\n", UNKNOWN),
        (b"\n", b"ERR empty request, expected 'send time'\n"),
        (b"\r\n", b"ERR empty request, expected 'send time'\n"),
        (b"send \xff time\n", b"ERR request is not UTF-8, expected 'send time'\n"),
        (
            b"send\x00time\n",
            b"ERR control character in request, expected 'send time'\n",
        ),
        (b"send\rtime\n", b"ERR control character in request, expected 'send time'\n"),
    ],
)
def test_a_bad_request_gets_err_and_the_connection_stays_usable(
    server, connect, request_, reply
):
    connection = connect(server)
    assert connection.ask(request_) == reply
    timestamp(connection.ask())


def test_a_last_request_without_lf_is_answered_at_eof(server, connect):
    connection = connect(server)
    connection.send(b"send time")
    connection.sock.shutdown(socket.SHUT_WR)
    timestamp(connection.line())
    assert connection.line() == b""


def test_a_line_at_the_limit_is_not_too_long(start_server, connect):
    server = start_server(max_line=16)
    connection = connect(server)
    assert connection.ask(b"x" * 16 + b"\n") == UNKNOWN
    assert connection.ask(b"x" * 16 + b"\r\n") == UNKNOWN
    timestamp(connection.ask(b"send time" + b" " * 7 + b"\r\n"))


@pytest.mark.parametrize(
    "data",
    [b"x" * 17 + b"\n", b"x" * 17 + b"\r\n", b"x" * 18, b"x" * 100_000],
    ids=["limit+1", "limit+1 with CRLF", "no LF", "100 kB without LF"],
)
def test_an_overlong_line_gets_err_and_the_connection_closes(
    start_server, connect, data
):
    server = start_server(max_line=16)
    connection = connect(server)
    connection.send(data)
    assert connection.line() == b"ERR line too long\n"
    assert connection.line() == b""


def test_an_overlong_line_is_reported_even_if_the_client_keeps_sending(
    start_server, connect
):
    # The server drains what the client sent before closing, so no reset
    # overtakes the ERR line.
    server = start_server(max_line=16)
    connection = connect(server)
    connection.send(b"x" * 20 + b"\nsend time\n" * 1000)
    assert connection.line() == b"ERR line too long\n"
    assert connection.line() == b""


def test_the_default_limit_is_256_bytes(server, connect):
    connection = connect(server)
    assert connection.ask(b"y" * 256 + b"\n") == UNKNOWN
    assert connection.ask(b"y" * 257 + b"\n") == b"ERR line too long\n"


def test_an_idle_connection_gets_err_timeout_and_is_closed(start_server, connect):
    server = start_server(idle_timeout=0.2)
    connection = connect(server)
    timestamp(connection.ask())
    assert connection.line() == b"ERR timeout\n"
    assert connection.line() == b""


def test_a_trickling_client_is_cut_off_at_the_deadline(start_server, connect):
    # One byte every 20 ms: a per-read timeout of 0.3 s would never fire,
    # the deadline for the whole line does.
    server = start_server(idle_timeout=0.3)
    connection = connect(server)
    sent = 0
    for _ in range(500):  # at most 10 s
        readable, _, _ = select.select([connection.sock], [], [], 0.02)
        if readable:
            break
        connection.send(b"s")
        sent += 1
    assert connection.line() == b"ERR timeout\n"
    assert connection.line() == b""
    assert sent > 0.3 / 0.02 / 2  # the bytes kept coming well past a read timeout


@contextlib.contextmanager
def client_that_does_not_read(server: TimeServer) -> Iterator[socket.socket]:
    """A client that sends requests and reads none, until the server's write blocks."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon
        sock.settimeout(TIMEOUT)
        sock.connect(server.server_address)
        sock.sendall(b"send time\n")
        timestamp(sock.makefile("rb").readline())  # the handler is running
        # Unread replies fill the buffers until the server's write blocks;
        # then it reads no more, and this socket's send buffer fills too.
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                sock.send(b"send time\n" * 100)
        yield sock


def test_a_client_that_does_not_read_is_cut_off(start_server, connect):
    server = start_server(idle_timeout=1.0)
    with client_that_does_not_read(server):
        server.wait_finished()
    timestamp(connect(server).ask())


def test_over_the_cap_a_client_gets_err_busy_at_once(start_server, connect):
    server = start_server(max_connections=2)
    first, second = connect(server), connect(server)
    timestamp(first.ask())
    timestamp(second.ask())
    third = connect(server)
    assert third.line() == b"ERR busy\n"
    assert third.line() == b""
    first.close()
    server.wait_finished(2)  # the first connection and the refused one
    timestamp(connect(server).ask())
    timestamp(second.ask())


def test_a_client_sending_at_once_still_gets_err_busy(start_server, connect):
    server = start_server(max_connections=1)
    timestamp(connect(server).ask())
    late = connect(server)
    late.send(b"send time\n" * 100)
    assert late.line() == b"ERR busy\n"


@pytest.mark.parametrize(
    "soft, requested, cap",
    [(1024, 512, 512), (300, 512, 268), (100, 512, 128), (100, 2, 2), (None, 512, 512)],
)
def test_the_cap_fits_the_open_file_limit(monkeypatch, soft, requested, cap):
    monkeypatch.setattr(capabilities, "open_file_limit", lambda: soft)
    assert connection_cap(requested) == cap


@pytest.mark.skipif(
    not capabilities.OPEN_FILE_LIMIT, reason="the open-file limit is not checked here"
)
@pytest.mark.parametrize("soft, limit", [(300, 300), (-1, None)])
def test_the_open_file_limit_is_the_soft_limit(monkeypatch, soft, limit):
    resource = capabilities.resource
    soft = resource.RLIM_INFINITY if soft == -1 else soft
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, soft))
    assert capabilities.open_file_limit() == limit


def test_a_lowered_cap_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(capabilities, "open_file_limit", lambda: 200)
    with TimeServer(("127.0.0.1", 0)) as server:
        assert server.max_connections == 168
    assert "open-file limit allows 168 connections, not 512" in caplog.text


def test_resets_are_ordinary(server, connect, caplog):
    midline = connect(server)
    midline.send(b"send ti")
    flooding = connect(server)
    flooding.send(b"send time\n" * 2000)
    reset(midline)
    reset(flooding)
    server.wait_finished(2)
    timestamp(connect(server).ask())
    debug = [
        r
        for r in caplog.records
        if r.levelno == logging.DEBUG and "reset" in r.getMessage()
    ]
    assert debug  # logged quietly; the fixture checks nothing was logged as an error


def test_each_connection_is_logged_once(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="timeservice")
    connection = connect(server)
    connection.ask()
    connection.ask(b"nope\n")
    connection.close()
    server.wait_finished()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1
    assert lines[0].endswith(": closed after 2 request(s)")


def test_ipv6_loopback(start_server, connect):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = start_server("::1")
    assert server.address_family == socket.AF_INET6
    timestamp(connect(server).ask())


def test_the_ipv6_wildcard_serves_ipv4_too(start_server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = start_server("::")
    port = server.server_address[1]
    for host in ("127.0.0.1", "::1"):
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"send time\n")
            timestamp(sock.makefile("rb").readline())


def test_shutdown_answers_lines_already_received(start_server, connect):
    # The clock blocks the first answer until the server is closing, so
    # the second and third lines are waiting in the server when it stops.
    block, entered, release = threading.Event(), threading.Event(), threading.Event()

    def slow_clock():
        if block.is_set():
            entered.set()
            release.wait(TIMEOUT)
        return datetime.now(UTC)

    server = start_server(clock=moments(slow_clock))
    idle = connect(server)
    timestamp(idle.ask())
    block.set()
    busy = connect(server)
    busy.send(b"send time\n" * 3)
    assert entered.wait(TIMEOUT)
    server.shutdown()
    closing = threading.Thread(target=server.server_close)
    closing.start()
    release.set()
    for _ in range(3):
        timestamp(busy.line())
    assert busy.line() == b"ERR server shutting down\n"
    assert busy.line() == b""
    assert idle.line() == b"ERR server shutting down\n"
    assert idle.line() == b""
    closing.join(TIMEOUT)
    assert not closing.is_alive()


def test_shutdown_does_not_wait_for_a_client_that_does_not_read(server):
    with client_that_does_not_read(server):
        server.shutdown()
        server.server_close()  # returns after the grace period, not never
        assert server.finished.qsize() == 1


def test_restarting_at_once_on_the_same_port_works(start_server, connect):
    server = start_server(idle_timeout=0.05)
    port = server.server_address[1]
    connection = connect(server)
    assert connection.line() == b"ERR timeout\n"
    assert connection.line() == b""
    connection.close()  # the server closed first, so its side is in TIME_WAIT
    server.shutdown()
    server.server_close()
    with TimeServer(("127.0.0.1", port)) as again:
        assert again.server_address[1] == port


def recording_clock(record):
    """A clock that notes something about the thread that asks it."""

    def clock():
        record()
        return datetime.now(UTC)

    return clock


def test_one_thread_serves_connection_after_connection(start_server, connect):
    threads = []
    server = start_server(
        clock=moments(
            recording_clock(lambda: threads.append(threading.current_thread()))
        )
    )
    for _ in range(5):
        connection = connect(server)
        timestamp(connection.ask())
        connection.close()
        server.wait_finished()
    assert len(threads) == 5
    assert len(set(threads)) == 1


def test_a_thread_without_connections_ends(start_server, connect):
    threads = []
    server = start_server(
        clock=moments(
            recording_clock(lambda: threads.append(threading.current_thread()))
        ),
        in_loop=False,  # every connection a thread, as socketserver has it
    )
    server.thread_idle = 0.05
    connection = connect(server)
    timestamp(connection.ask())
    connection.close()
    server.wait_finished()
    threads[0].join(TIMEOUT)
    assert not threads[0].is_alive()
    timestamp(connect(server).ask())  # a new thread takes the next connection
    assert threads[1] is not threads[0]


def test_busy_connections_each_get_a_thread(start_server, connect):
    threads = []
    server = start_server(
        clock=moments(
            recording_clock(lambda: threads.append(threading.current_thread()))
        ),
        in_loop=False,
    )
    connections = [connect(server) for _ in range(3)]
    for connection in connections:
        timestamp(connection.ask())
    assert len(set(threads)) == 3


def test_the_serving_thread_answers_complete_lines_itself(start_server, connect):
    threads = []
    server = start_server(
        clock=moments(
            recording_clock(lambda: threads.append(threading.current_thread()))
        )
    )
    connections = [connect(server) for _ in range(3)]
    for connection in connections * 2:
        timestamp(connection.ask())
    assert len(set(threads)) == 1
    assert threads[0].name != CONNECTION_THREAD  # serve_forever()'s
    assert server.statistics()["open_connections"] == 3
    for connection in connections:
        connection.close()
    server.wait_finished(3)
    assert server.statistics()["requests"] == 6


def test_a_line_in_parts_goes_on_in_a_thread(serving, connect):
    threads = []
    clock = recording_clock(lambda: threads.append(threading.current_thread()))
    server = serving(TakenOver(("127.0.0.1", 0), clock=moments(clock)))
    connection = connect(server)
    timestamp(connection.ask())
    connection.send(b"send")
    held = server.taken.get(timeout=TIMEOUT)
    assert (held.unread, held.requests, held.cause) == (b"send", 1, None)
    connection.send(b" time\r\nsend time\n")
    timestamp(connection.line())
    timestamp(connection.line())
    assert [t.name == CONNECTION_THREAD for t in threads] == [False, True, True]
    assert connection.ask(b"nonsense\n").startswith(b"ERR ")
    connection.close()
    server.wait_finished()
    assert server.statistics()["requests"] == 4


def test_a_client_that_keeps_asking_outlives_the_idle_timeout(start_server, connect):
    # Each answer moves the deadline: ten requests, each after two of the
    # server's sweeps (at least 0.1 s apart), span more than two idle
    # timeouts of 0.4 s and are all answered.
    server = start_server(idle_timeout=0.4)
    connection = connect(server)
    for _ in range(10):
        timestamp(connection.ask())
        server.wait_sweeps(2)
        readable, _, _ = select.select([connection.sock], [], [], 0)
        assert not readable  # no ERR timeout in between
    timestamp(connection.ask())


def test_connections_get_the_small_send_buffer(start_server, connect):
    sizes = []

    class Measuring(TimeRequestHandler):
        def setup(self) -> None:
            super().setup()
            sizes.append(
                self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            )

    server = start_server(handler_class=Measuring)
    timestamp(connect(server).ask())
    (size,) = sizes
    assert size == server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert size <= 2 * server.send_buffer  # Linux doubles what it is given
