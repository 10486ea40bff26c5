"""NTP's interleaved mode (RFC 9769), as chronyd's ``xleave`` asks for it:
a request whose origin is the receive timestamp of an earlier reply gets
the kernel's transmit time of that reply, once, and only its source."""

from __future__ import annotations

import os
import socket

import pytest
from conftest import port_of, udp_socket

from timeservice.host import capabilities
from timeservice.server import NtpHandler, NtpServer
from timeservice.transport.ancillary import SO_TIMESTAMPNS, stamp_of
from timeservice.wire import ntp

pytestmark = pytest.mark.skipif(
    not capabilities.TRANSMIT_TIMESTAMPS,
    reason="needs the kernel's transmit times (Linux's SO_TIMESTAMPING)",
)

S = 1_000_000_000


@pytest.fixture
def server(serve):
    started = serve(NtpServer, NtpHandler, local_stratum=10, upstream=None)
    if not started.interleaving:
        pytest.skip("the kernel's stamps are not on this process's clock")
    return started


def client(host: str = "127.0.0.1") -> socket.socket:
    """A client socket that hears when each reply arrived (the kernel's time)."""
    sock = udp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return sock


def asked(sock: socket.socket, server, origin: bytes = bytes(8)) -> tuple:
    """Send a request naming `origin`, with fresh random receive and transmit
    timestamps as chronyd's are: the reply, and when it arrived."""
    request = bytearray(ntp.request_packet(0))
    request[24:32] = origin
    request[32:48] = os.urandom(16)
    sock.sendto(bytes(request), ("127.0.0.1", port_of(server)))
    data, ancillary, _, _ = sock.recvmsg(512, 256)
    return bytes(request), ntp.Packet.unpack(data), stamp_of(ancillary)


def stamp(value: int) -> bytes:
    return value.to_bytes(8, "big")


def ns(timestamp: int) -> int:
    return ntp.from_timestamp(timestamp, 0 if timestamp == 0 else 2**62)


def test_the_next_request_gets_the_kernels_transmit_time_of_the_reply_before(
    server,
):
    with client() as sock:
        _, first, _ = asked(sock, server)  # basic: an origin of zero
        # Named, but nothing kept for it (the first was basic): basic again,
        # its transmit time now kept.
        request, second, arrived = asked(sock, server, stamp(first.receive))
        assert second.origin == int.from_bytes(request[40:48], "big")
        request, third, _ = asked(sock, server, stamp(second.receive))
    # Interleaved: the origin is the request's receive timestamp, the
    # transmit timestamp the kernel's of the second reply.
    assert third.origin == int.from_bytes(request[32:40], "big")
    left = ntp.from_timestamp(third.transmit, arrived)
    assert 0 <= arrived - left < 1_000_000  # it left before it arrived, just
    read = ntp.from_timestamp(second.transmit, arrived)
    assert read <= left + 1  # the clock read for it, then the send: later
    assert second.receive & 1 and not second.transmit & 1


def test_a_transmit_time_is_given_once_and_to_its_source_only(server):
    with client() as sock, client("127.0.0.2") as other:
        _, first, _ = asked(sock, server)
        _, second, _ = asked(sock, server, stamp(first.receive))
        # Another address that names it gets a basic answer.
        request, forged, _ = asked(other, server, stamp(second.receive))
        assert forged.origin == int.from_bytes(request[40:48], "big")
        request, third, _ = asked(sock, server, stamp(second.receive))
        assert third.origin == int.from_bytes(request[32:40], "big")
        # The same receive timestamp named again: basic (RFC 9769).
        request, again, _ = asked(sock, server, stamp(second.receive))
        assert again.origin == int.from_bytes(request[40:48], "big")


def test_a_basic_client_is_answered_as_ever(serve):
    server = serve(NtpServer, NtpHandler, local_stratum=10, upstream=None, burst=None)
    with client() as sock:
        request, reply, _ = asked(sock, server)
        assert reply.origin == int.from_bytes(request[40:48], "big")
        # ntpd's clients name the transmit timestamp: its bit is clear.
        request, reply, _ = asked(sock, server, stamp(reply.transmit))
        assert reply.origin == int.from_bytes(request[40:48], "big")
    # With no rate limit, the table keeps only what interleaved mode needs.
    assert server.limits is not None and len(server.limits) == 0
