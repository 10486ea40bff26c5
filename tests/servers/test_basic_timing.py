"""When a basic NTP reply's transmit timestamp is read: a server woken from
idle readies its send (to a socket of its own, then run through to the
client without sending), writes the timestamp for
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
from timeservice.transport import transmit
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


@needs_probe
def test_a_warming_send_goes_to_the_servers_own_sink_and_is_read_back(server):
    with udp_socket() as peer:
        server.warm(server.socket, b"warming", peer.getsockname())
        sink = server.sinks[True]
        assert not sink.connected  # not read back before the send it readies
        server.settle()
        assert sink.connected  # it heard the server's datagram, and no other
        assert sink.socket.getpeername() == server.socket.getsockname()
        with pytest.raises(BlockingIOError):
            sink.socket.recv(64)  # read back already
        with udp_socket() as stranger:  # a local user's datagram is not heard
            stranger.sendto(b"stranger", ("127.0.0.1", sink.port))
            with pytest.raises(BlockingIOError):
                sink.socket.recv(64)
    server.server_close()
    assert sink.socket.fileno() == -1 and server.sinks is None


@needs_probe
def test_a_dual_stack_server_warms_each_family_on_its_own_path():
    with Warming(("::", 0), NtpHandler, local_stratum=10, upstream=None) as server:
        server.warm(server.socket, b"four", ("::ffff:127.0.0.1", 9))
        server.warm(server.socket, b"six", ("::1", 9))  # reads back the first
        server.settle()
        four, six = server.sinks[True], server.sinks[False]
        assert four.socket.family == socket.AF_INET and four.connected
        assert six.socket.family == socket.AF_INET6 and six.connected


@needs_probe
def test_without_a_loopback_to_warm_through_the_run_through_is_left(
    server, monkeypatch
):
    monkeypatch.setitem(transmit.LOOPBACK, socket.AF_INET, "198.51.100.7")
    with udp_socket() as peer:
        server.warm(server.socket, b"not sent", peer.getsockname())
        assert server.sinks == {True: None}  # no sink can be bound: not tried again
        server.send_exact(server.socket, head_for(server), peer.getsockname())
        assert len(peer.recv(512)) == ntp.PACKET_BYTES  # sent all the same


@needs_probe
def test_an_ipv6_only_socket_warms_no_ipv4_path():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::1", 0))
    server = Warming.on_socket(sock, NtpHandler, local_stratum=10, upstream=None)
    with server:
        with pytest.raises(OSError):  # no IPv4 from it: the run-through fails too
            server.warm(server.socket, b"not sent", ("::ffff:127.0.0.1", 9))
        assert server.sinks == {True: None}  # its send to the sink failed first
        server.warm(server.socket, b"not sent", ("::1", 9))
        server.settle()
        assert server.sinks[False].connected


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
            with pytest.raises(BlockingIOError):  # its warming read back after
                server.sinks[True].socket.recv(512)
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
