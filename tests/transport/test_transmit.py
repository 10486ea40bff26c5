"""The kernel's transmit times of datagrams sent, read back from the error
queue: matched to what was sent by its bytes, never to another's; and
where the platform has none, a plain send."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import run_python, udp_socket

from timeservice.host import capabilities
from timeservice.transport.ancillary import SO_TIMESTAMPNS, STAMP_THIS, stamp_of
from timeservice.transport.datagram import DatagramServer
from timeservice.transport.transmit import TransmitTimes

needs_transmit_times = pytest.mark.skipif(
    not capabilities.TRANSMIT_TIMESTAMPS,
    reason="needs the kernel's transmit times (Linux's SO_TIMESTAMPING)",
)


class Stamping(DatagramServer):
    """A datagram server that asks for transmit times and keeps them."""

    transmit_times = True

    def __init__(self, *args, **kwargs) -> None:
        self.times: list[tuple] = []
        super().__init__(*args, **kwargs)

    def transmitted(self, token, transmit_ns: int) -> None:
        self.times.append((token, transmit_ns))


@pytest.fixture
def stamping():
    server = Stamping(("127.0.0.1", 0), None)
    if server.timed is None:
        server.server_close()
        pytest.skip("the kernel's stamps are not on this process's clock")
    with server:
        yield server


def received_at(sock: socket.socket) -> tuple[bytes, int]:
    data, ancillary, _, _ = sock.recvmsg(512, 256)
    stamp = stamp_of(ancillary)
    assert stamp is not None
    return data, stamp


def error_queue_is_empty(sock: socket.socket) -> bool:
    try:
        sock.recvmsg(2048, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


@needs_transmit_times
def test_a_datagram_comes_back_with_its_token_and_when_it_left(stamping):
    with udp_socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        before = time.time_ns()
        stamping.send_stamped(stamping.socket, b"one" * 16, peer.getsockname(), "one")
        after = time.time_ns()
        data, arrived = received_at(peer)
    assert data == b"one" * 16
    [(token, left)] = stamping.times
    assert token == "one"
    assert before <= left <= after  # on loopback, taken within the send
    assert 0 <= arrived - left < 1_000_000  # and the peer's arrival after it
    assert error_queue_is_empty(stamping.socket)  # read, not left to pile up


@needs_transmit_times
def test_a_stamp_goes_only_to_the_datagram_it_stamped(stamping):
    with udp_socket() as peer:
        where = peer.getsockname()
        # Another process on the same socket (a worker) stamps one of its own.
        stamping.socket.sendmsg([b"theirs" * 8], [STAMP_THIS], 0, where)
        stamping.send_stamped(stamping.socket, b"a" * 48, where, "a")
        stamping.send_stamped(stamping.socket, b"b" * 48, where, "b")
        for _ in range(3):
            peer.recv(512)
    assert [token for token, _ in stamping.times] == ["a", "b"]
    first, second = (left for _, left in stamping.times)
    assert first <= second
    assert error_queue_is_empty(stamping.socket)


@needs_transmit_times
def test_what_is_awaited_is_bounded(stamping):
    times = TransmitTimes(stamping.socket)
    with udp_socket() as peer:
        where = peer.getsockname()
        times.sent(b"first" * 8, "first")
        for number in range(times.pending_most):  # more than it keeps
            times.sent(number.to_bytes(40, "big"), number)
        for data in (b"first" * 8, b"last" * 10):
            if data == b"last" * 10:
                times.sent(data, "last")
            stamping.socket.sendmsg([data], [STAMP_THIS], 0, where)
            peer.recv(512)
        # The first was forgotten to make room: its stamp matches nothing.
        assert [token for token, _ in times.collect()] == ["last"]


def test_a_plain_send_where_the_kernel_gives_no_times():
    code = (
        "import logging, socket\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from timeservice.server import NtpServer\n"
        "servers = [NtpServer(('127.0.0.1', 0), local_stratum=10, upstream=None)"
        " for _ in range(2)]\n"
        "peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "peer.bind(('127.0.0.1', 0)); peer.settimeout(5)\n"
        "servers[0].send_stamped(servers[0].socket, b'x', peer.getsockname(), 1)\n"
        "print(peer.recv(8), servers[0].interleaving, servers[0].timed)\n"
    )
    result = run_python(code, TIMESERVICE_PORTABLE="1")
    assert result.stdout == "b'x' False None\n", result.stderr
    said = "NTP: the kernel gives no transmit times here"
    assert result.stderr.count(said) == 1, result.stderr  # once a process
