"""Daytime, Time and NTP: wire formats worked out by hand, then end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import random
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    bounded,
    faketime,
    one_line,
    readline_within,
    replies,
    server_process,
    udp_socket,
)

from timeservice import client
from timeservice.clients import sampling, standard
from timeservice.clients.offset import Sample
from timeservice.clock import claims
from timeservice.clock import kernel as kernelclock
from timeservice.host import capabilities
from timeservice.policy.limits import RateLimiter
from timeservice.programs import client as client_program
from timeservice.programs import opening
from timeservice.programs import server as server_program
from timeservice.server import (
    DaytimeHandler,
    NtpHandler,
    NtpServer,
    OneShotServer,
    TimeHandler,
)
from timeservice.transport import datagram
from timeservice.transport.datagram import DatagramServer
from timeservice.wire import ntp, rfc868
from timeservice.wire.daytime import parse_daytime
from timeservice.wire.errors import ReplyError

S = 1_000_000_000
WRAP = 2_085_978_496  # 2036-02-07T06:28:16Z, when the 32-bit count wraps
UTC = timezone.utc


# RFC 868


def test_the_1970_epoch_is_2208988800_seconds_after_1900():
    assert rfc868.encode(0) == bytes.fromhex("83aa7e80")
    assert rfc868.decode(bytes.fromhex("83aa7e80"), near=0) == 0


def test_the_count_wraps_in_2036_and_is_read_in_the_nearest_era():
    assert datetime.fromtimestamp(WRAP, UTC) == datetime(
        2036, 2, 7, 6, 28, 16, tzinfo=UTC
    )
    assert rfc868.encode(WRAP - 1) == b"\xff\xff\xff\xff"
    assert rfc868.encode(WRAP) == b"\x00\x00\x00\x00"
    assert rfc868.encode(WRAP + 1) == b"\x00\x00\x00\x01"
    for near in (WRAP - 100, WRAP + 100):  # a reader on either side of the wrap
        assert rfc868.decode(b"\xff\xff\xff\xff", near) == WRAP - 1
        assert rfc868.decode(b"\x00\x00\x00\x01", near) == WRAP + 1
    assert rfc868.decode(b"\x00\x00\x00\x01", near=-rfc868.EPOCH_1900) == (
        1 - rfc868.EPOCH_1900  # a reader in 1900
    )


def test_a_time_reply_is_four_bytes():
    with pytest.raises(ValueError):
        rfc868.decode(b"\x00\x01\x02", near=0)


def test_an_rfc_868_reply_is_read_from_its_first_four_bytes():
    # inetutils-inetd sends four zero bytes after the time; rdate reads four.
    assert rfc868.decode(rfc868.encode(1000) + bytes(4), near=1000) == 1000
    with pytest.raises(ValueError):
        rfc868.decode(bytes(3), near=0)


# NTP timestamps and packets


def test_ntp_timestamps_by_hand():
    assert ntp.to_timestamp(0) == 0x83AA7E80_00000000
    assert ntp.to_timestamp(S // 2) == 0x83AA7E80_80000000
    assert ntp.to_timestamp(WRAP * S + S // 4) == 0x00000000_40000000
    assert (
        ntp.from_timestamp(0x00000000_40000000, near_ns=WRAP * S) == WRAP * S + S // 4
    )
    assert (
        ntp.from_timestamp(0xFFFFFFFF_C0000000, near_ns=WRAP * S) == WRAP * S - S // 4
    )
    now = 1_795_000_000_123_456_789
    assert abs(ntp.from_timestamp(ntp.to_timestamp(now), now) - now) <= 1


def test_the_short_format_rounds_up():
    assert ntp.to_short(1.0) == 0x00010000
    assert ntp.to_short(1 / 65536 / 2) == 1  # never below the true bound
    assert ntp.to_short(-1) == 0
    assert ntp.from_short(0x00018000) == 1.5


REQUEST = bytes.fromhex(
    "1b000600" + "00" * 12 + "00" * 24 + "e9d1b8c012345678"
)  # LI 0, version 3, mode 3, poll 6; transmit 0xe9d1b8c0_12345678


def test_the_server_reply_by_hand():
    state = ntp.ServerState(ntp.LEAP_NONE, 10, claims.LOCAL_REFERENCE, -20, 0.5)
    receive = (0xE9D1B8C0 - rfc868.EPOCH_1900) * S + S // 2
    reply = ntp.server_reply(REQUEST, state, receive, lambda: receive + S // 4)
    assert len(reply) == 48
    assert reply[0] == 0 << 6 | 3 << 3 | 4  # leap 0, version copied, server
    assert reply[1:4] == bytes([10, 6, 0xEC])  # stratum, poll copied, precision -20
    assert reply[4:8] == bytes(4)  # root delay
    assert reply[8:12] == bytes.fromhex("00008000")  # root dispersion 0.5 s
    assert reply[12:16] == bytes([127, 127, 1, 1])
    assert reply[16:24] == bytes.fromhex("e9d1b8c000000000")  # reference: the second
    assert reply[24:32] == REQUEST[40:48]  # origin: the request's transmit, as is
    assert reply[32:40] == bytes.fromhex("e9d1b8c080000000")  # receive
    assert reply[40:48] == bytes.fromhex("e9d1b8c0c0000000")  # transmit, read last


@pytest.mark.parametrize(
    "packet",
    [
        REQUEST[:47],  # short
        REQUEST + bytes(20),  # a key ID and MAC, which this server does not do
        bytes([0x1C]) + REQUEST[1:],  # mode 4
        bytes([0x03]) + REQUEST[1:],  # version 0
        bytes([0x2B]) + REQUEST[1:],  # version 5
        b"",
    ],
    ids=["short", "mac", "mode 4", "version 0", "version 5", "empty"],
)
def test_what_is_not_a_client_request_is_dropped(packet):
    state = claims.server_state(None, 10, -20)
    assert ntp.server_reply(packet, state, 0, lambda: 0) is None
    assert ntp.kiss_of_death(packet) is None


def test_a_kiss_of_death_carries_no_time():
    kiss = ntp.Packet.unpack(ntp.kiss_of_death(REQUEST))
    assert (kiss.leap, kiss.stratum, kiss.reference_id) == (3, 0, b"RATE")
    assert kiss.origin == kiss.receive == kiss.transmit == 0xE9D1B8C0_12345678


@pytest.mark.parametrize(
    "kernel, local, expected",
    [
        # Synchronised from no one it knows: stratum 15 and no reference ID.
        (kernelclock.KernelState(True, 0, 0.25), None, (0, 15, bytes(4), 0.25)),
        (kernelclock.KernelState(True, 1, 1e-9), None, (1, 15, bytes(4), 2**-20)),
        (
            kernelclock.KernelState(True, 2, 0.01),
            1,
            (2, 15, bytes(4), 0.01),
        ),  # not LOCL
        (
            kernelclock.KernelState(False, 0, 16.0),
            10,
            (0, 10, bytes([127, 127, 1, 1]), 2**-20),
        ),
        (kernelclock.KernelState(False, 0, 16.0), 1, (0, 1, b"LOCL", 2**-20)),
        (kernelclock.KernelState(False, 0, 16.0), None, (3, 0, b"INIT", 16.0)),
        (None, None, (3, 0, b"INIT", 16.0)),
    ],
    ids=[
        "synced",
        "leap insert",
        "synced, local stratum not used",
        "local 10",
        "local 1",
        "unsynced",
        "no kernel",
    ],
)
def test_the_server_never_claims_a_synchronisation_it_lacks(kernel, local, expected):
    state = claims.server_state(kernel, local, -20)
    assert (
        state.leap,
        state.stratum,
        state.reference_id,
        state.root_dispersion,
    ) == expected


UPSTREAM = ntp.Upstream(
    ntp.LEAP_INSERT, 2, bytes([192, 0, 2, 1]), 0.012, 0.003, 0xE9D1B8C0_00000000
)


def test_a_synchronised_server_claims_what_its_upstream_says():
    synced = kernelclock.KernelState(True, ntp.LEAP_NONE, 0.5)
    state = claims.server_state(synced, 10, -20, UPSTREAM, age=100.0)
    assert (state.leap, state.stratum, state.reference_id) == (
        1,
        3,
        UPSTREAM.reference_id,
    )
    assert state.root_delay == 0.012
    # Its dispersion, the precision, and RFC 5905's 15 ppm for 100 s since.
    assert state.root_dispersion == pytest.approx(0.003 + 2**-20 + 100 * 15e-6)
    reply = ntp.Packet.unpack(ntp.server_reply(REQUEST, state, S, lambda: S))
    assert reply.reference == 0xE9D1B8C0_00000000
    assert reply.root_delay == ntp.to_short(0.012)
    at_15 = ntp.Upstream(0, 15, bytes(4), 0.0, 0.0)
    assert claims.server_state(synced, None, -20, at_15).stratum == 15


def test_an_unsynchronised_reply_carries_no_reference_time():
    unsynced = claims.server_state(kernelclock.KernelState(False, 0, 16.0), None, -20)
    reply = ntp.Packet.unpack(ntp.server_reply(REQUEST, unsynced, S, lambda: S))
    assert (reply.leap, reply.reference) == (3, 0)
    local = claims.server_state(None, 10, -20)  # its own reference: this second
    receive = (0xE9D1B8C0 - rfc868.EPOCH_1900) * S + S // 2
    reply = ntp.Packet.unpack(ntp.server_reply(REQUEST, local, receive, lambda: 0))
    assert reply.reference == 0xE9D1B8C0_00000000


@pytest.mark.parametrize(
    "text, reference_id",
    [
        ("192.0.2.1", bytes([192, 0, 2, 1])),
        ("gps", b"GPS\0"),
        ("PPS1", b"PPS1"),
        ("2001:db8::1", bytes.fromhex("39ab9b37")),  # MD5's first four bytes
    ],
)
def test_a_reference_id_names_its_server(text, reference_id):
    assert ntp.reference_id(text) == reference_id


@pytest.mark.parametrize("text", ["", "GPS12", "a.b", "ß"])
def test_what_names_no_server_is_no_reference_id(text):
    with pytest.raises(ValueError):
        ntp.reference_id(text)


def test_ntp_version_1_requests_are_answered_as_chrony_answers_them():
    v1 = bytes([0x08]) + REQUEST[1:]  # leap 0, version 1, mode 0 (no mode field)
    state = claims.server_state(None, 10, -20)
    reply = ntp.Packet.unpack(ntp.server_reply(v1, state, S, lambda: S, 40000))
    assert (reply.version, reply.mode, reply.origin) == (1, 4, 0xE9D1B8C0_12345678)
    assert ntp.server_reply(v1, state, S, lambda: S, 123) is None  # a peer's
    assert ntp.server_reply(bytes([0x10]) + REQUEST[1:], state, S, lambda: S, 1) is None
    assert ntp.Packet.unpack(ntp.kiss_of_death(v1, source_port=40000)).version == 1


def reply_to(request: bytes, **fields) -> bytes:
    base = {
        "leap": 0, "version": 4, "mode": 4, "stratum": 2, "poll": 0, "precision": -20,
        "root_delay": 0, "root_dispersion": 0, "reference_id": bytes(4),
        "reference": 0, "origin": ntp.Packet.unpack(request).transmit,
        "receive": 1 << 32, "transmit": 2 << 32,
    }  # fmt: skip
    return ntp.Packet(**{**base, **fields}).pack()


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"origin": 5}, "origin timestamp differs"),
        ({"mode": 5}, "not a server reply"),
        ({"stratum": 0, "reference_id": b"RATE"}, "Kiss-o'-Death, code 'RATE'"),
        ({"leap": 3}, "unsynchronised"),
        ({"stratum": 16}, "stratum 16"),
        ({"transmit": 0}, "no transmit timestamp"),
        ({"version": 0}, "version 0"),
        ({"version": 5}, "version 5"),
        ({"receive": 0}, "no receive timestamp"),
        ({"receive": 3 << 32}, "answered before it received"),
        ({"root_dispersion": 60 << 16}, "root distance 60.000 s is more than 1 s"),
        ({"root_delay": 3 << 16}, "root distance 1.500 s"),
    ],
)
def test_the_client_checks_a_reply_as_chrony_does(fields, problem):
    request = ntp.request_packet(1_000 * S)
    with pytest.raises(ntp.NtpError, match=problem):
        ntp.check_reply(reply_to(request, **fields), request)
    with pytest.raises(ntp.NtpError, match="short"):
        ntp.check_reply(b"\x24" * 47, request)
    assert ntp.check_reply(reply_to(request), request).stratum == 2


# The client's arithmetic for the standard protocols


def test_ntp_offset_and_bound_by_hand():
    # Sent at 10 s, received by the server at 12.5001 s by its clock, answered
    # 0.0001 s later, back at 10.0003 s: offset ((2.5001) + (2.4999)) / 2.
    sample = Sample(
        t1=10 * S,
        ts=12_500_100_000,
        t4=10_000_300_000,
        delay=300_000,
        t3=12_500_200_000,
        root_distance=0.001,
    )
    assert sample.offset == pytest.approx(2.5, abs=1e-12)
    assert sample.round_trip == 200_000
    assert sample.error == pytest.approx(0.0001 + 0.001, abs=1e-12)


def test_a_whole_second_reading_widens_the_bound_by_that_second():
    # The server said 12 s: it read its clock somewhere in [12 s, 13 s).
    sample = Sample(
        t1=10 * S, ts=12 * S, t4=10_000_200_000, delay=200_000, resolution=S
    )
    assert sample.offset == pytest.approx(2.4999, abs=1e-12)
    assert sample.error == pytest.approx(0.5001, abs=1e-12)


def test_a_whole_second_from_a_clock_that_moves_once_a_tick_is_in_the_bound(serve):
    # glibc's time() on Linux (xinetd's Daytime and Time) moves once a tick:
    # 1.7 ms into second 10 it may still say 9. One machine: offset 0.
    t1 = 10 * S + 1_700_000
    exact = Sample(t1=t1, ts=9 * S, t4=t1 + 150_000, delay=150_000, resolution=S)
    assert abs(exact.offset) > exact.error  # the second alone misses it
    widened = dataclasses.replace(exact, resolution=S + standard.COARSE_CLOCK)
    assert abs(widened.offset) <= widened.error
    # The client allows the tick for every reading in whole seconds.
    tcp = serve(OneShotServer, TimeHandler)
    assert client.ask_time("127.0.0.1", port_of(tcp)).resolution == widened.resolution


# Daytime forms


@pytest.mark.parametrize(
    "text, moment, resolution",
    [
        ("2026-11-27T10:15:42.117940+01:00\r\n", "2026-11-27T09:15:42.117940", 1e-6),
        ("2026-11-27T09:15:42Z", "2026-11-27T09:15:42", 1.0),
        ("2026-11-27 09:15:42.5+00:00", "2026-11-27T09:15:42.500000", 0.1),
        ("27 NOV 2026 09:15:42 UTC\r\n", "2026-11-27T09:15:42", 1.0),
    ],
)
def test_daytime_forms(text, moment, resolution):
    reading = parse_daytime(text)
    assert reading.moment == datetime.fromisoformat(moment).replace(tzinfo=UTC)
    assert reading.resolution == pytest.approx(resolution)


def test_the_ctime_form_is_local_time(monkeypatch):
    reading = parse_daytime("Fri Nov 27 09:15:42 2026\r\n")
    assert reading.moment == datetime(2026, 11, 27, 9, 15, 42).astimezone()
    assert reading.resolution == 1.0


@pytest.mark.parametrize(
    "text", ["hello", "27 NOV 2026 09:15:42 CET", "", "2026-11-27"]
)
def test_unknown_daytime_forms_are_refused(text):
    with pytest.raises(ValueError):
        parse_daytime(text)


# The rate limit


def test_a_bucket_allows_its_burst_then_its_rate():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another source has its own bucket
    assert limiter.allow("a", 0.5)  # one token back after half a second at 2/s
    assert not limiter.allow("a", 0.5)
    assert [limiter.allow("a", 10.0) for _ in range(4)] == [True, True, True, False]


def test_the_limiter_remembers_a_bounded_number_of_sources():
    limiter = RateLimiter(rate=0.0, burst=1, sources=2, forget=60.0)
    assert limiter.allow("a", 0.0) and limiter.allow("b", 1.0)
    # "a" has been quiet for longer than `forget`: it makes room for "c".
    assert limiter.allow("c", 61.0)
    assert not limiter.allow("c", 61.0)  # its own bucket, now empty
    assert not limiter.allow("b", 61.0)  # still remembered, still empty
    assert limiter.allow("a", 200.0)  # forgotten, so a full bucket again


# End to end, over loopback


@pytest.fixture
def serve(serving):
    """Start a server class on loopback port 0; conftest's `serving` stops it."""

    def start(server_class, handler, **settings):
        return serving(server_class(("127.0.0.1", 0), handler, **settings))

    return start


def port_of(server) -> int:
    return server.server_address[1]


def test_daytime_over_tcp_and_udp(serve):
    tcp = serve(OneShotServer, DaytimeHandler)
    udp = serve(DatagramServer, DaytimeHandler, min_source_port=1024)
    for udp_flag, server in ((False, tcp), (True, udp)):
        text, sample = client.ask_daytime("127.0.0.1", port_of(server), udp=udp_flag)
        assert sample is not None and sample.resolution == 1000
        assert abs(sample.offset) <= sample.error


def test_time_over_tcp_and_udp(serve):
    tcp = serve(OneShotServer, TimeHandler)
    udp = serve(DatagramServer, TimeHandler, min_source_port=1024)
    for udp_flag, server in ((False, tcp), (True, udp)):
        sample = client.ask_time("127.0.0.1", port_of(server), udp=udp_flag)
        assert sample.answer.endswith(".000000" + sample.answer[-6:])
        assert abs(sample.offset) <= sample.error < 0.6


def shifted(seconds: float):
    def clock():
        return datetime.now(UTC) + timedelta(seconds=seconds)

    return clock


@pytest.mark.parametrize("shift", [2.5, -1000.25])
def test_ntp_finds_a_shifted_server_within_its_bound(serve, shift):
    server = serve(NtpServer, NtpHandler, local_stratum=10, clock=shifted(shift))
    samples = [client.ask_ntp("127.0.0.1", port_of(server)) for _ in range(8)]
    for sample in samples:
        assert abs(sample.offset - shift) <= sample.error


@pytest.mark.parametrize("moment", [WRAP - 2, WRAP + 2])
def test_both_sides_of_the_2036_wrap_end_to_end(serve, moment):
    fixed = datetime.fromtimestamp(moment, UTC)
    time_server = serve(OneShotServer, TimeHandler, clock=lambda: fixed)
    ntp_server = serve(NtpServer, NtpHandler, local_stratum=10, clock=lambda: fixed)
    # The local clock reads 2026: ten years from the wrap, well inside the
    # 68 years either way that the nearest era covers.
    assert client.ask_time("127.0.0.1", port_of(time_server)).ts == moment * S
    assert client.ask_ntp("127.0.0.1", port_of(ntp_server)).t3 == moment * S


def test_an_unsynchronised_server_is_one_clear_error(serve, monkeypatch):
    server = serve(NtpServer, NtpHandler)
    monkeypatch.setattr(
        server, "_state", (float("inf"), claims.server_state(None, None, -20))
    )
    with pytest.raises(ntp.NtpError, match="unsynchronised"):
        client.ask_ntp("127.0.0.1", port_of(server))


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
    with udp_socket() as daemon:
        server = serve(NtpServer, NtpHandler, upstream=daemon.getsockname())
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


def test_a_server_never_asks_itself(serve, monkeypatch):
    synchronised(monkeypatch)
    server = serve(NtpServer, NtpHandler, local_stratum=10)
    server.query.address = server.server_address  # its own port
    server.query.current(0.0)
    assert server.query._request is None  # nothing sent


def ask_raw(server) -> bytes:
    """One NTP exchange with `server`, the reply as it came."""
    with udp_socket() as sock:
        sock.sendto(ntp.request_packet(1000 * S), server.server_address)
        return sock.recv(512)


def failing_clock():
    raise OSError("no clock")


def test_a_failing_clock_sends_nothing(serve, caplog):
    tcp = serve(OneShotServer, TimeHandler, clock=failing_clock)
    udp = serve(DatagramServer, TimeHandler, clock=failing_clock)
    with pytest.raises(ReplyError, match="no time"):
        client.ask_time("127.0.0.1", port_of(tcp))
    with pytest.raises(TimeoutError):
        client.ask_time("127.0.0.1", port_of(udp), udp=True, timeout=0.3)
    assert "cannot read the clock" in caplog.text
    caplog.clear()  # expected errors, one line each


def test_a_flood_from_one_source_gets_no_more_than_its_limit(serve):
    server = serve(NtpServer, NtpHandler, local_stratum=10)
    flood, polite = udp_socket(), udp_socket("127.0.0.2")
    with flood, polite:
        request = ntp.request_packet(0)
        for _ in range(200):
            flood.sendto(request, server.server_address)
        # Another source is served, after the flood: datagrams go in order.
        polite.sendto(request, server.server_address)
        assert ntp.Packet.unpack(polite.recv(512)).stratum == 10
        got = replies(flood, quiet=0.05)  # all sent by now
    answers = [r for r in got if ntp.Packet.unpack(r).stratum != 0]
    kisses = [r for r in got if ntp.Packet.unpack(r).stratum == 0]
    # The burst of 16, one more a second, and one Kiss-o'-Death in four of
    # the rest; nothing else.
    assert 16 <= len(answers) <= 16 + 2
    assert len(kisses) <= (200 - 16) // 4 + 1
    assert kisses and all(ntp.Packet.unpack(k).reference_id == b"RATE" for k in kisses)
    assert server.refused["rate_limited"] >= 200 - 18


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
                assert ntp.check_reply(sock.recv(512), probe).stratum == 10
            assert server.dropped["not an NTP client request"] == 1
            # Replies over loopback arrive before sendto() returns: none
            # more has been sent.
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(512)
            sock.settimeout(TIMEOUT)
            bounded(server.handle_request)  # the two left
            for probe in probes[2:]:
                assert ntp.check_reply(sock.recv(512), probe).stratum == 10


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
            assert ntp.check_reply(sock.recv(512), probe).stratum == 10
        assert replies(sock) == []
    assert server.dropped["not an NTP client request"] == 500


# The command lines


def test_the_server_process_serves_every_protocol_asked_for():
    options = ("--daytime", "0", "--time", "0", "--ntp", "0", "--local-stratum", "10")
    with server_process("0", *options) as (process, _):
        lines = [readline_within(process.stdout) for _ in range(3)]
        ports = {}
        for line, name, how in zip(
            lines,
            ("daytime", r"time \(RFC 868\)", "NTP"),
            (r"\(TCP, UDP\)", r"\(TCP, UDP\)", r"\(UDP\)"),
            strict=True,
        ):
            found = re.fullmatch(
                rf"Serving {name} on 127\.0\.0\.1 port (\d+) {how} \.\.\.\n", line
            )
            assert found, line
            ports[name] = int(found[1])
        for argv in (
            ["--protocol", "daytime", "--udp"],
            ["--protocol", "time"],
            ["--protocol", "ntp"],
        ):
            port = ports[
                {"daytime": "daytime", "time": r"time \(RFC 868\)", "ntp": "NTP"}[
                    argv[1]
                ]
            ]
            result = run_client(
                *argv, "127.0.0.1", str(port), "--offset", "--json", "--burst"
            )
            assert result.returncode == 0, result.stderr
            figures = json.loads(result.stdout)
            assert abs(figures["offset"]) <= figures["error"]
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        log = process.stderr.read()
    assert "NTP: answering as stratum 10" in log
    assert "Traceback" not in log


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "timeservice.client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_server_says_why_a_standard_port_cannot_be_had(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert server_program.main(["0", "--ntp", str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in err


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--local-stratum", "10"], "--local-stratum goes with --ntp"),
        (["--ntp", "0", "--local-stratum", "16"], "--local-stratum"),
        (["--daytime", "70000"], "not a port number"),
    ],
)
def test_the_server_rejects_bad_protocol_options(capsys, argv, problem):
    with pytest.raises(SystemExit) as exited:
        server_program.main(argv)
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err


def test_the_client_rejects_udp_for_the_line_protocol(capsys):
    with pytest.raises(SystemExit) as exited:
        client_program.main(["--udp"])
    assert exited.value.code == 2
    assert "--udp goes with --protocol daytime or time" in capsys.readouterr().err


def test_the_client_prints_an_unknown_daytime_form_as_it_came(capsys):
    with oneshot_server(b"Tuesday, the 27th\r\n") as port:
        assert (
            client_program.main(["--protocol", "daytime", "127.0.0.1", str(port)]) == 0
        )
    assert capsys.readouterr().out == "Tuesday, the 27th\n"
    with oneshot_server(b"Tuesday, the 27th\r\n") as port:
        assert (
            client_program.main(
                ["--protocol", "daytime", "127.0.0.1", str(port), "--offset"]
            )
            == 1
        )
    assert "cannot read the daytime form 'Tuesday, the 27th'" in one_line(
        capsys.readouterr().err
    )


@contextlib.contextmanager
def oneshot_server(reply: bytes):
    """A TCP server that sends `reply` to one connection and closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(reply)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(TIMEOUT)


def test_the_client_reads_an_eight_byte_time_reply_as_rdate_does():
    now = int(time.time())
    with oneshot_server(rfc868.encode(now) + bytes(4)) as port:  # inetutils-inetd
        sample = client.ask_time("127.0.0.1", port)
    assert sample.ts == now * S


@pytest.mark.slow
def test_ntp_requests_are_paced_as_servers_expect():
    arrived: list[float] = []
    with udp_socket() as fake:

        def answer() -> None:
            for _ in range(3):
                request, peer = fake.recvfrom(512)
                arrived.append(time.monotonic())
                fake.sendto(reply_to(request, receive=1 << 32, transmit=1 << 32), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        port = str(fake.getsockname()[1])
        argv = ["--protocol", "ntp", "--offset", "-n", "3", "127.0.0.1", port]
        assert client_program.main(argv) == 0
        thread.join(TIMEOUT)
    gaps = [b - a for a, b in zip(arrived[:-1], arrived[1:], strict=True)]
    assert len(gaps) == 2 and min(gaps) >= sampling.NTP_SPACING * 0.95


def test_a_burst_stops_at_a_kiss_and_keeps_what_it_has(serve, capsys):
    server = serve(NtpServer, NtpHandler, local_stratum=10)  # 16 at once
    argv = ["--protocol", "ntp", "--offset", "-n", "20", "--burst", "--json"]
    assert client_program.main([*argv, "127.0.0.1", str(port_of(server))]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["samples"] == 16
    assert "stopped asking: " in one_line(captured.err)
    assert "Kiss-o'-Death, code 'RATE'" in captured.err


def test_the_client_names_a_kiss_of_death_in_one_line(serve, capsys):
    server = serve(NtpServer, NtpHandler, local_stratum=10, burst=1, rate=0.0)
    port = str(port_of(server))
    assert client_program.main(["--protocol", "ntp", "127.0.0.1", port]) == 0
    capsys.readouterr()
    assert client_program.main(["--protocol", "ntp", "127.0.0.1", port]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"127.0.0.1 port {port}: server sent a Kiss-o'-Death, code 'RATE'" in err


def test_the_client_says_a_server_is_unsynchronised(serve, capsys, monkeypatch):
    server = serve(NtpServer, NtpHandler)
    monkeypatch.setattr(
        server, "_state", (float("inf"), claims.server_state(None, None, -20))
    )
    assert (
        client_program.main(["--protocol", "ntp", "127.0.0.1", str(port_of(server))])
        == 1
    )
    assert (
        "server says its clock is unsynchronised (leap indicator 3, stratum 0)"
        in one_line(capsys.readouterr().err)
    )


def test_the_client_times_out_on_a_silent_udp_port(capsys):
    with udp_socket() as silent:
        port = str(silent.getsockname()[1])
        assert (
            client_program.main(
                ["--protocol", "time", "--udp", "127.0.0.1", port, "--timeout", "0.2"]
            )
            == 1
        )
    assert f"no answer from 127.0.0.1 port {port} within 0.2 s" in one_line(
        capsys.readouterr().err
    )


# What is left when things go wrong


def test_a_failing_clock_sends_no_daytime_and_no_ntp(serve, caplog):
    tcp = serve(OneShotServer, DaytimeHandler, clock=failing_clock)
    udp = serve(DatagramServer, DaytimeHandler, clock=failing_clock)
    ntp_server = serve(NtpServer, NtpHandler, local_stratum=10, clock=failing_clock)
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
    server = serve(DatagramServer, TimeHandler, burst=1, rate=0.0)
    with udp_socket() as sock, udp_socket("127.0.0.2") as probe:
        sock.sendto(b"", server.server_address)
        assert len(sock.recv(16)) == 4
        sock.sendto(b"", server.server_address)
        probe.sendto(b"", server.server_address)  # its own bucket; answered after
        assert len(probe.recv(16)) == 4
        assert replies(sock, quiet=0.05) == []
    assert server.refused["rate_limited"] == 1


def test_the_client_passes_over_a_stray_datagram():
    with udp_socket() as fake:

        def answer():
            request, peer = fake.recvfrom(512)
            fake.sendto(b"stray", peer)
            fake.sendto(reply_to(request, stratum=4, receive=2 << 32), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        sample = client.ask_ntp("127.0.0.1", fake.getsockname()[1], timeout=TIMEOUT)
        thread.join(TIMEOUT)
    assert sample.t3 is not None


def test_a_receive_time_on_another_clock_is_passed_over():
    """A server whose T3 - T2 is longer than the whole round trip has its
    receive time from another clock: its transmit time alone is used."""
    with udp_socket() as fake:

        def answer():
            request, peer = fake.recvfrom(512)
            now = time.time_ns()
            fields = {
                "receive": ntp.to_timestamp(now - 50_000_000),  # 50 ms before
                "transmit": ntp.to_timestamp(now),
            }
            fake.sendto(reply_to(request, **fields), peer)

        thread = threading.Thread(target=answer)
        thread.start()
        sample = client.ask_ntp("127.0.0.1", fake.getsockname()[1], timeout=TIMEOUT)
        thread.join(TIMEOUT)
    assert sample.t3 is None  # read as any server's answer
    assert 0 < sample.round_trip == sample.delay
    assert abs(sample.offset) <= sample.error  # one machine's clock


def test_kernel_receive_times_are_used_only_on_the_same_clock():
    if not capabilities.RECEIVE_TIMESTAMPS:
        pytest.skip("no kernel receive times on this platform")
    assert datagram.kernel_stamps_agree()
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (Debian: faketime) for a shifted clock")
    for shift in ("+0.003s", "-0.002s", "+5s"):
        shifted = subprocess.run(
            [*faketime(shift), sys.executable, "-c",
             "from timeservice.transport import ancillary;"
             " print(ancillary.kernel_stamps_agree())"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert shifted.stdout == "False\n", (shift, shifted.stderr)


@pytest.mark.parametrize(
    "reply, ask, problem",
    [
        (b"", client.ask_daytime, "server sent no time"),
        (b"\x00\x01\x02", client.ask_time, "a Time reply is 4 bytes, not 3"),
        (b"", client.ask_time, "server sent no time"),
    ],
)
def test_the_client_refuses_a_short_answer(reply, ask, problem):
    with oneshot_server(reply) as port:
        with pytest.raises(ReplyError, match=problem):
            ask("127.0.0.1", port)


def test_a_udp_port_taken_for_daytime_is_one_line(capsys):
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        port = tcp.getsockname()[1]  # free for TCP; now take it for UDP
        try:
            taken = udp_socket(port=port)
        except OSError:
            pytest.skip("the UDP port of the same number is in use")
    with taken:
        assert server_program.main(["0", "--daytime", str(port)]) == 1
    err = one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in err


def test_port_0_tries_again_when_udp_is_taken(monkeypatch, capsys):
    def taken(*args, **kwargs):
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(opening, "DatagramServer", taken)
    assert server_program.main(["0", "--time", "0"]) == 1
    assert "no port free for both TCP and UDP on 127.0.0.1" in one_line(
        capsys.readouterr().err
    )


def test_when_one_service_cannot_listen_the_others_are_closed(monkeypatch, capsys):
    opened = []
    real = OneShotServer

    def recording(*args, **kwargs):
        server = real(*args, **kwargs)
        opened.append(server)
        return server

    monkeypatch.setattr(opening, "OneShotServer", recording)
    with udp_socket() as taken:
        port = str(taken.getsockname()[1])
        assert server_program.main(["0", "--daytime", "0", "--ntp", port]) == 1
    assert opened and all(server.socket.fileno() == -1 for server in opened)
    assert "cannot listen" in one_line(capsys.readouterr().err)


# The kernel's clock state, with the call faked


def fake_adjtimex(result: int, status: int, maxerror: int = 250_000):
    def call(timex):
        timex._obj.status, timex._obj.maxerror = status, maxerror
        return result

    return call


@pytest.mark.parametrize(
    "result, status, expected",
    [
        (0, 0, kernelclock.KernelState(True, ntp.LEAP_NONE, 0.25)),
        (1, kernelclock.STA_INS, kernelclock.KernelState(True, ntp.LEAP_INSERT, 0.25)),
        (2, kernelclock.STA_DEL, kernelclock.KernelState(True, ntp.LEAP_DELETE, 0.25)),
        (
            0,
            kernelclock.STA_UNSYNC,
            kernelclock.KernelState(False, ntp.LEAP_NONE, 0.25),
        ),
        (
            kernelclock.TIME_ERROR,
            0,
            kernelclock.KernelState(False, ntp.LEAP_NONE, 0.25),
        ),
        (-1, 0, None),
    ],
)
def test_the_kernel_state_read_from_adjtimex(monkeypatch, result, status, expected):
    monkeypatch.setattr(kernelclock, "_call", fake_adjtimex(result, status))
    assert kernelclock.read() == expected


def test_no_kernel_state_where_there_is_no_call(monkeypatch):
    monkeypatch.setattr(kernelclock, "_call", None)
    assert kernelclock.read() is None
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", True)
    assert kernelclock._find_call() is None
    monkeypatch.setattr(kernelclock.capabilities, "PORTABLE", False)

    def no_library(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(kernelclock.ctypes, "CDLL", no_library)
    assert kernelclock._find_call() is None
    monkeypatch.setattr(kernelclock.ctypes, "CDLL", lambda *a, **k: object())
    assert kernelclock._find_call() is None
