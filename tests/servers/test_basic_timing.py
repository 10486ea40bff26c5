"""When a basic NTP reply's transmit timestamp is read: a server woken from
idle runs its send through once without sending, writes the timestamp for
a moment just ahead and sends once the clock has passed it, so that the
timestamp is never later than the datagram and as near it as Python can
be; a busy server reads the clock last and sends."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from conftest import TIMEOUT, udp_socket

from timeservice.clock.system import Clock
from timeservice.host import capabilities
from timeservice.server import NtpHandler, NtpServer
from timeservice.servers import ntp as ntp_server
from timeservice.transport.ancillary import IP_PKTINFO, SO_TIMESTAMPNS, stamp_of
from timeservice.transport.datagram import Reply
from timeservice.wire import ntp

needs_probe = pytest.mark.skipif(
    not capabilities.PROBE_SEND, reason="needs Linux's MSG_PROBE"
)
needs_receive_times = pytest.mark.skipif(
    not capabilities.RECEIVE_TIMESTAMPS,
    reason="needs the kernel's receive times (SO_TIMESTAMPNS)",
)


class Standing(Clock):
    """A clock that stands at one instant."""

    def now_ns(self) -> int:
        return 1_800_000_000_123_456_789


class Warming(NtpServer):
    """An NTP server that counts the sends it runs through unsent."""

    def __init__(self, *args, **kwargs) -> None:
        self.warmed = 0
        super().__init__(*args, **kwargs)

    def warm(self, reply, data: bytes, address) -> None:
        self.warmed += 1
        super().warm(reply, data, address)


@pytest.fixture
def server():
    with Warming(("127.0.0.1", 0), NtpHandler, local_stratum=10, upstream=None) as made:
        yield made


def head_for(server: NtpServer) -> bytes:
    """A reply up to its transmit timestamp, to a client request."""
    request = ntp.request_packet(0)
    head = ntp.reply_head(request, server.state(), time.time_ns())
    assert head is not None
    return head


def transmit_ns(reply: bytes) -> int:
    return ntp.from_timestamp(ntp.Packet.unpack(reply).transmit, time.time_ns())


@needs_probe
@pytest.mark.parametrize("through", ["socket", "reply"])
def test_a_send_run_through_sends_nothing(server, through):
    with udp_socket() as peer:
        address = peer.getsockname()
        reply = server.socket
        if through == "reply":  # a wildcard server's, with its ancillary data
            info = struct.pack("@i4s4s", 0, socket.inet_aton("127.0.0.1"), bytes(4))
            reply = Reply(server.socket, [(socket.IPPROTO_IP, IP_PKTINFO, info)])
        server.warm(reply, b"not sent", address)
        server.socket.sendto(b"sent", address)
        assert peer.recv(64) == b"sent"  # the first, and only, to arrive


@needs_probe
@pytest.mark.parametrize("peer_host", ["::1", "127.0.0.1"])
def test_a_send_run_through_sends_nothing_from_a_dual_stack_socket(peer_host):
    family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
    with (
        Warming(("::", 0), NtpHandler, local_stratum=10, upstream=None) as server,
        socket.socket(family, socket.SOCK_DGRAM) as peer,
    ):
        peer.bind((peer_host, 0))
        peer.settimeout(TIMEOUT)
        port = peer.getsockname()[1]
        address = (peer_host if ":" in peer_host else f"::ffff:{peer_host}", port)
        server.warm(server.socket, b"not sent", address)
        server.socket.sendto(b"sent", address)
        assert peer.recv(64) == b"sent"


@needs_receive_times
def test_a_reply_from_idle_carries_a_time_no_later_than_it_arrived(server):
    with udp_socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        for _ in range(20):
            before = time.time_ns()
            server.send_exact(server.socket, head_for(server), peer.getsockname())
            data, ancillary, _, _ = peer.recvmsg(512, 256)
            arrived = stamp_of(ancillary)
            assert arrived is not None
            assert before < transmit_ns(data) <= arrived  # written ahead, sent after
    assert server.warmed == 20


def test_a_clock_that_stands_still_is_read_again_not_written_ahead():
    standing = Standing()
    with (
        NtpServer(
            ("127.0.0.1", 0),
            NtpHandler,
            local_stratum=10,
            upstream=None,
            clock=standing,
        ) as server,
        udp_socket() as peer,
    ):
        server.send_exact(server.socket, head_for(server), peer.getsockname())
        reply = peer.recv(512)
    assert reply[40:] == ntp.transmit_field(standing.now_ns())  # not LEAD_NS on


def test_only_a_request_after_an_idle_spell_is_answered_from_idle(server):
    with udp_socket() as peer:
        address = peer.getsockname()
        request = ntp.request_packet(0)
        received = time.time_ns()
        server._sent_ns = received - ntp_server.IDLE_NS  # the last, long before
        server.answer((request, server.socket, received), address)
        after_idle = transmit_ns(peer.recv(512))
        busy = server._sent_ns + 1  # the next, at once
        server.answer((request, server.socket, busy), address)
        assert transmit_ns(peer.recv(512)) > after_idle
    assert server.warmed == 1  # the first only
