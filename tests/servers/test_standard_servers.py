"""Daytime, Time and NTP served end to end over loopback, and what is left
when things go wrong."""

from __future__ import annotations

import logging
import random
import socket
import socketserver
import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import (
    TIMEOUT,
    bounded,
    daemon_port,
    moments,
    port_of,
    replies,
    reply_to,
    udp_socket,
)

from timeservice import client
from timeservice.clock import kernel as kernelclock
from timeservice.host.local import SERVED_PORTS
from timeservice.policy.sources import SourceLimits
from timeservice.server import (
    DaytimeHandler,
    NtpHandler,
    NtpServer,
    OneShotServer,
    TimeHandler,
)
from timeservice.servers.upstream import UpstreamQuery
from timeservice.transport.datagram import DatagramServer
from timeservice.wire import ntp, ntp_checks
from timeservice.wire.errors import ReplyError

S = 1_000_000_000
WRAP = 2_085_978_496  # 2036-02-07T06:28:16Z, when the 32-bit count wraps
UTC = UTC


# End to end, over loopback


def test_daytime_over_tcp_and_udp(serve):
    tcp = serve(OneShotServer, DaytimeHandler)
    udp = serve(DatagramServer, DaytimeHandler, min_source_port=1024)
    for udp_flag, server in ((False, tcp), (True, udp)):
        sample = client.ask_daytime("127.0.0.1", port_of(server), udp=udp_flag)
        assert sample.resolution_ns == 1000
        assert abs(sample.offset) <= sample.error


def test_time_over_tcp_and_udp(serve):
    tcp = serve(OneShotServer, TimeHandler)
    udp = serve(DatagramServer, TimeHandler, min_source_port=1024)
    for udp_flag, server in ((False, tcp), (True, udp)):
        sample = client.ask_time("127.0.0.1", port_of(server), udp=udp_flag)
        assert sample.answer.endswith(".000000" + sample.answer[-6:])
        assert abs(sample.offset) <= sample.error < 0.6


def shifted_by(seconds: float):
    def clock():
        return datetime.now(UTC) + timedelta(seconds=seconds)

    return clock


@pytest.mark.parametrize("shift", [2.5, -1000.25])
def test_ntp_finds_a_shifted_server_within_its_bound(serve, shift):
    server = serve(
        NtpServer, NtpHandler, local_stratum=10, clock=moments(shifted_by(shift))
    )
    samples = [client.ask_ntp("127.0.0.1", port_of(server)) for _ in range(8)]
    for sample in samples:
        assert abs(sample.offset - shift) <= sample.error


@pytest.mark.parametrize("moment", [WRAP - 2, WRAP + 2])
def test_both_sides_of_the_2036_wrap_end_to_end(serve, moment):
    fixed = datetime.fromtimestamp(moment, UTC)
    time_server = serve(OneShotServer, TimeHandler, clock=moments(lambda: fixed))
    ntp_server = serve(
        NtpServer, NtpHandler, local_stratum=10, clock=moments(lambda: fixed)
    )
    # The local clock reads 2026: ten years from the wrap, well inside the
    # 68 years either way that the nearest era covers.
    assert client.ask_time("127.0.0.1", port_of(time_server)).ts_ns == moment * S
    assert client.ask_ntp("127.0.0.1", port_of(ntp_server)).t3_ns == moment * S


def answering_upstream(sock: socket.socket, stratum: int, asked: threading.Event):
    """A fake daemon on `sock` that answers one request as `stratum`."""

    def answer() -> None:
        request, peer = sock.recvfrom(512)
        fields = {"stratum": stratum, "reference_id": bytes([192, 0, 2, 1])}
        sock.sendto(reply_to(request, root_delay=1 << 14, **fields), peer)
        asked.set()

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def synchronised(monkeypatch, max_error: float = 0.25) -> None:
    state = kernelclock.KernelState(True, ntp.LEAP_NONE, max_error)
    monkeypatch.setattr(kernelclock, "read", lambda: state)


def test_a_synchronised_server_asks_its_daemon_what_to_claim(serve, monkeypatch):
    synchronised(monkeypatch)
    asked = threading.Event()
    with udp_socket(port=daemon_port()) as daemon:
        server = serve(
            NtpServer,
            NtpHandler,
            upstream=daemon.getsockname(),  # a privileged port: root's
        )
        server.state_interval = 0  # every request reads the state afresh
        answering = answering_upstream(daemon, 2, asked)
        first = ntp.Packet.unpack(ask_raw(server))  # asked; not answered yet
        assert (first.stratum, first.reference_id) == (15, bytes(4))
        assert asked.wait(TIMEOUT)
        answering.join(TIMEOUT)
        then = ntp.Packet.unpack(ask_raw(server))
    assert (then.stratum, then.reference_id) == (3, bytes([192, 0, 2, 1]))
    assert ntp.from_short(then.root_delay) == 0.25
    sample = client.ask_ntp("127.0.0.1", port_of(server))
    assert sample.root_distance >= 0.125  # the daemon's root delay, halved


def test_without_its_daemon_a_server_claims_what_it_is_told(serve, monkeypatch):
    synchronised(monkeypatch, max_error=0.04)
    server = serve(
        NtpServer,
        NtpHandler,
        upstream=None,
        local_stratum=1,  # not used: the kernel says synchronised
        upstream_claim=(1, b"GPS\0"),
    )
    reply = ntp.Packet.unpack(ask_raw(server))
    assert (reply.stratum, reply.reference_id) == (2, b"GPS\0")
    assert ntp.from_short(reply.root_dispersion) >= 0.04


def test_a_server_never_asks_itself():
    """A port this process serves, on this host, is never asked: the answer
    would be the server's own claim. The same query asks once the port is
    no longer served; loopback delivers at send(), in order, so a datagram
    sent the first time would be read first."""
    with udp_socket(port=daemon_port()) as daemon:
        port = daemon.getsockname()[1]
        query = UpstreamQuery(("127.0.0.1", port))
        SERVED_PORTS.add(port)  # as if a server of this process held it
        try:
            query.current(0.0)
        finally:
            SERVED_PORTS.remove(port)
        query.current(query.interval)  # now it asks
        daemon.settimeout(TIMEOUT)
        first = daemon.recv(512)
        daemon.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing more: the first was not sent
            daemon.recv(512)
        query.close()
    assert len(first) == ntp.PACKET_BYTES and first[0] & 7 == 3  # one request


def ask_raw(server) -> bytes:
    """One NTP exchange with `server`, the reply as it came."""
    with udp_socket() as sock:
        sock.sendto(ntp.request_packet(1000 * S), server.server_address)
        return sock.recv(512)


def failing_clock():
    raise OSError("no clock")


def test_a_failing_clock_sends_nothing(serve, caplog):
    tcp = serve(OneShotServer, TimeHandler, clock=moments(failing_clock))
    udp = serve(DatagramServer, TimeHandler, clock=moments(failing_clock))
    with pytest.raises(ReplyError, match="no time"):
        client.ask_time("127.0.0.1", port_of(tcp))
    with pytest.raises(TimeoutError):
        client.ask_time("127.0.0.1", port_of(udp), udp=True, timeout=0.3)
    assert "cannot read the clock" in caplog.text
    caplog.clear()  # expected errors, one line each


def test_a_flood_from_one_source_gets_its_burst_and_a_share_of_the_rest(serve):
    chance = random.Random(3)
    policy = SourceLimits(random_source=chance.random)  # as shipped, but the dice
    server = serve(NtpServer, NtpHandler, local_stratum=10, limits=policy)
    flood, polite = udp_socket(), udp_socket("127.0.0.2")
    with flood, polite:
        request = ntp.request_packet(0)
        for _ in range(200):
            flood.sendto(request, server.server_address)
        # Another source is served, after the flood: datagrams go in order.
        polite.sendto(request, server.server_address)
        assert ntp.Packet.unpack(polite.recv(512)).stratum == 10
        got = replies(flood, quiet=0.05)  # all sent by now
    strata = [ntp.Packet.unpack(r).stratum for r in got]
    # The burst of 16, then about 1 in 4 of the other 184 (chrony's leak);
    # no kiss unless asked for; never more than it sent.
    assert 0 not in strata
    assert 16 + 184 // 8 <= len(got) <= 16 + 184 // 2
    assert len(got) - 16 == policy.leaked
    assert server.refused["rate_limited"] == 200 - len(got)


def test_daytime_and_time_drop_datagrams_from_low_ports(serve):
    server = serve(DatagramServer, TimeHandler, min_source_port=1024)
    try:
        low = udp_socket(port=1001)  # needs root or CAP_NET_BIND_SERVICE
    except PermissionError:
        pytest.skip("binding a port below 1024 needs root")
    with low, udp_socket() as high:
        low.sendto(b"", server.server_address)
        high.sendto(b"", server.server_address)
        assert len(high.recv(16)) == 4
        assert replies(low) == []
    assert server.refused["low_source_port"] == 1


def test_one_wake_up_answers_the_datagrams_already_waiting():
    """Up to `batch` of them, each on its own: a malformed one is dropped."""
    with NtpServer(("127.0.0.1", 0), local_stratum=10, burst=None) as server:
        server.batch = 3
        with udp_socket() as sock:
            probes = [ntp.request_packet(n * S) for n in range(1, 5)]
            # All five are in the server's buffer before it reads one.
            for data in (probes[0], b"garbage", *probes[1:]):
                sock.sendto(data, server.server_address)
            bounded(server.handle_request)  # one wake-up: the first three
            for probe in probes[:2]:
                assert ntp_checks.check_reply(sock.recv(512), probe).stratum == 10
            assert server.dropped["not an NTP client request"] == 1
            # Replies over loopback arrive before sendto() returns: none
            # more has been sent.
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(512)
            sock.settimeout(TIMEOUT)
            bounded(server.handle_request)  # the two left
            for probe in probes[2:]:
                assert ntp_checks.check_reply(sock.recv(512), probe).stratum == 10


GARBAGE_SEED = 20261127


def test_garbage_datagrams_get_nothing_and_cost_nothing_else(serve):
    server = serve(NtpServer, NtpHandler, local_stratum=10, burst=None)
    rng = random.Random(GARBAGE_SEED)
    with udp_socket() as sock:
        for batch in range(10):  # small enough for the socket's buffer
            for _ in range(50):
                size = rng.choice([0, 1, 47, 48, 49, 68, 200, 511])
                data = bytearray(rng.randbytes(size))
                if size == 48:  # a packet's size, but no client's first byte
                    data[0] = rng.choice([0x00, 0x03, 0x1C, 0x2B, 0x3B, 0x07, 0xE4])
                sock.sendto(bytes(data), server.server_address)
            probe = ntp.request_packet(batch * S)
            sock.sendto(probe, server.server_address)  # answered after the batch
            assert ntp_checks.check_reply(sock.recv(512), probe).stratum == 10
        assert replies(sock) == []
    assert server.dropped["not an NTP client request"] == 500


# What is left when things go wrong


def test_a_failing_clock_sends_no_daytime_and_no_ntp(serve, caplog):
    tcp = serve(OneShotServer, DaytimeHandler, clock=moments(failing_clock))
    udp = serve(DatagramServer, DaytimeHandler, clock=moments(failing_clock))
    ntp_server = serve(
        NtpServer, NtpHandler, local_stratum=10, clock=moments(failing_clock)
    )
    with pytest.raises(ReplyError, match="no time"):
        client.ask_daytime("127.0.0.1", port_of(tcp))
    with pytest.raises(TimeoutError):
        client.ask_daytime("127.0.0.1", port_of(udp), udp=True, timeout=0.3)
    with pytest.raises(TimeoutError):
        client.ask_ntp("127.0.0.1", port_of(ntp_server), timeout=0.3)
    assert caplog.text.count("cannot read the clock") == 3
    caplog.clear()  # expected errors, one line each


class Exploding(socketserver.BaseRequestHandler):
    """Fails on b"os" and b"value"; answers anything else, so a test can wait."""

    def handle(self) -> None:
        data, sock, _ = self.request
        if data in (b"os", b"value"):
            raise (OSError if data == b"os" else ValueError)("boom")
        sock.sendto(b"done", self.client_address)


def test_a_datagram_handler_that_fails_logs_one_line(serve, caplog):
    server = serve(DatagramServer, Exploding, burst=None)
    with udp_socket() as sock:
        for data in (b"os", b"value", b"probe"):
            sock.sendto(data, server.server_address)
        assert sock.recv(16) == b"done"  # datagrams are handled in order
    records = [r for r in caplog.records if "boom" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.ERROR]
    assert all(r.exc_info is None for r in records)  # no traceback
    caplog.clear()


def test_over_the_limit_a_plain_datagram_server_drops(serve):
    policy = SourceLimits(
        burst=1, rate=0.0, leak=0.0, kiss=True
    )  # a kiss, which it has not
    server = serve(DatagramServer, TimeHandler, limits=policy)
    with udp_socket() as sock, udp_socket("127.0.0.2") as probe:
        sock.sendto(b"", server.server_address)
        assert len(sock.recv(16)) == 4
        sock.sendto(b"", server.server_address)
        probe.sendto(b"", server.server_address)  # its own bucket; answered after
        assert len(probe.recv(16)) == 4
        assert replies(sock, quiet=0.05) == []
    assert server.refused["rate_limited"] == 1
