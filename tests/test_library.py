"""The library inside a host program: what a program may set or do around it."""

from __future__ import annotations

import contextlib
import socket
from datetime import UTC, datetime, timedelta

from conftest import timestamp

from timeservice.clock.system import SystemClock, time_line


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
    ahead = datetime.now(UTC) + timedelta(minutes=59)
    line = time_line(ShiftedClock(utc=True))
    assert timestamp(line) > ahead
    server = start_server(clock=ShiftedClock())
    assert timestamp(connect(server).ask()) > ahead
