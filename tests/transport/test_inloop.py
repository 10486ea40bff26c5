"""Connections the serving thread answers itself: what it hands to a thread,
with what, and what a client sees either way."""

from __future__ import annotations

import socket
import struct

from conftest import TIMEOUT, TakenOver, timestamp

from timeservice.transport.inloop import Held


def test_replies_a_client_does_not_read_yet_go_out_from_a_thread(serving):
    server = serving(TakenOver(("127.0.0.1", 0), send_buffer=4096, lines_at_once=4096))
    lines = 4000  # empty: 4 kB read at once, 164 kB of ERR lines to send
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(server.server_address)
        sock.sendall(b"\n" * lines)
        held = server.taken.get(timeout=TIMEOUT)
        assert held.unsent and held.requests == lines  # answered, not yet sent
        with sock.makefile("rb") as replies:
            for _ in range(lines):
                assert replies.readline().startswith(b"ERR empty request")
            sock.sendall(b"send time\n")  # the thread goes on with the connection
            timestamp(replies.readline())
    server.wait_finished()
    assert server.statistics()["requests"] == lines + 1


def test_a_client_that_resets_its_connection_is_forgotten(server, connect):
    connection = connect(server)
    timestamp(connection.ask())
    connection.sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    connection.close()  # a reset, which the serving thread reads
    server.wait_finished()
    counts = server.statistics()
    assert (counts["open_connections"], counts["requests"]) == (0, 1)
    timestamp(connect(server).ask())  # and it goes on


def test_a_held_connection_cut_off_twice_is_shut_both_ways():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        accepted, address = listener.accept()
        with client, accepted:
            held = Held(accepted, address)
            held.expire("timeout", 0.5)
            assert held.cause == "timeout"
            client.sendall(b"send time\n")  # its reading side is shut, not its writing
            held.expire("timeout", 0.5, first=False)
            assert client.recv(16) == b""


def test_many_lines_at_once_go_to_a_thread(serving):
    server = serving(TakenOver(("127.0.0.1", 0)))
    lines = server.lines_at_once + 1  # more would hold the others up in the loop
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(server.server_address)
        sock.sendall(b"send time\n" * lines)
        held = server.taken.get(timeout=TIMEOUT)
        assert (held.unread, held.requests) == (b"send time\n" * lines, 0)
        with sock.makefile("rb") as replies:
            for _ in range(lines):
                timestamp(replies.readline())
