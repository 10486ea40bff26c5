"""The library inside a host program: what a program may set or do around it."""

from __future__ import annotations

import contextlib
import socket
import time
from datetime import UTC, datetime, timedelta

from conftest import timestamp

from timeservice.clock.system import Clock


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


class ShiftedClock(Clock):
    """The system clock an hour ahead, as a subclass would shift it."""

    def now_ns(self) -> int:
        return time.time_ns() + 3600 * 10**9


def test_a_clock_of_ones_own_is_answered_from(start_server, connect):
    ahead = datetime.now(UTC) + timedelta(minutes=59)
    server = start_server(clock=ShiftedClock(utc=True))
    assert timestamp(connect(server).ask()) > ahead
