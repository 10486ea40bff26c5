"""NTP packets field by field, worked out by hand: what the server sends,
what it claims and what the client accepts."""

from __future__ import annotations

import pytest
from conftest import reply_to

from timeservice.clock import claims
from timeservice.clock import kernel as kernelclock
from timeservice.wire import ntp, ntp_checks, rfc868

S = 1_000_000_000

WRAP = 2_085_978_496  # 2036-02-07T06:28:16Z, when the 32-bit count wraps


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
    # Receive with its lowest bit set, transmit clear and rounded up: an
    # origin with the bit set is a receive timestamp (RFC 9769's mark).
    assert reply[32:40] == bytes.fromhex("e9d1b8c080000001")  # receive
    assert reply[40:48] == bytes.fromhex("e9d1b8c0c0000002")  # transmit, read last
    same = ntp.server_reply(REQUEST, state, receive, lambda: receive)
    assert same[40:48] > same[32:40]  # a clock that did not move: still after


def test_an_interleaved_request_is_told_from_a_basic_one():
    basic = ntp.request_packet(1_000_000_000)  # origin 0
    assert not ntp.looks_interleaved(basic)
    state = claims.server_state(None, 10, -20)
    reply = ntp.server_reply(basic, state, 5 * S, lambda: 5 * S + 1000)
    # The next request names the reply's receive timestamp as its origin.
    asked = bytearray(basic)
    asked[24:32] = reply[32:40]
    asked[32:40] = bytes(range(8))  # a client's cookies, which differ
    assert ntp.looks_interleaved(bytes(asked))
    assert ntp.origin_of(bytes(asked)) == int.from_bytes(reply[32:40], "big")
    head = ntp.reply_head(bytes(asked), state, 6 * S, None, interleaved=True)
    assert head[24:32] == bytes(range(8))  # origin: the request's receive
    # A basic client names the transmit timestamp, whose bit is clear.
    asked[24:32] = reply[40:48]
    assert not ntp.looks_interleaved(bytes(asked))
    asked[24:32], asked[40:48] = reply[32:40], bytes(range(8))  # receive == transmit
    assert not ntp.looks_interleaved(bytes(asked))
    assert not ntp.looks_interleaved(bytes(asked[:40]))


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


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"origin": 5}, "origin timestamp differs"),
        ({"mode": 5}, "not a server reply"),
        ({"stratum": 0, "reference_id": b"RATE"}, "Kiss-o'-Death, code 'RATE'"),
        ({"leap": 3}, "not synchronised"),
        ({"stratum": 0, "leap": 3}, "not synchronised .*reference ID ''"),
        ({"stratum": 0, "reference_id": b"INIT", "leap": 3}, "'INIT'"),
        ({"stratum": 0, "reference_id": b"STEP"}, "not synchronised .*'STEP'"),
        ({"precision": 127}, "root distance 1.7e\\+38 s is more than 1 s"),
        ({"stratum": 16}, "stratum 16"),
        ({"transmit": 0}, "no transmit timestamp"),
        ({"version": 0}, "version 0"),
        ({"version": 5}, "version 5"),
        ({"receive": 0}, "no receive timestamp"),
        ({"receive": 3 << 32}, "answered before it received"),
        ({"root_dispersion": 60 << 16}, "root distance 60.000 s is more than 1 s"),
        ({"root_delay": 3 << 16}, "root distance 1.500 s"),
        ({"precision": 1}, "root distance 2.000 s"),  # RFC 5905's has it
    ],
)
def test_the_client_checks_a_reply_as_chrony_does(fields, problem):
    request = ntp.request_packet(1_000 * S)
    with pytest.raises(ntp.NtpError, match=problem):
        ntp_checks.check_reply(reply_to(request, **fields), request)
    with pytest.raises(ntp.NtpError, match="short"):
        ntp_checks.check_reply(b"\x24" * 47, request)
    assert ntp_checks.check_reply(reply_to(request), request).stratum == 2


def test_behind_a_stratum_1_server_the_claim_names_it_by_its_address():
    synced = kernelclock.KernelState(True, ntp.LEAP_NONE, 0.5)
    gps = ntp.Upstream(0, 1, b"GPS\0", 0.0, 0.001, source_id=bytes([127, 0, 0, 1]))
    state = claims.server_state(synced, None, -20, gps)
    assert (state.stratum, state.reference_id) == (2, bytes([127, 0, 0, 1]))
    # At stratum 2 and above the server's own reference ID is an address.
    behind = ntp.Upstream(0, 2, bytes([192, 0, 2, 1]), 0.0, 0.001, source_id=b"x")
    assert claims.server_state(synced, None, -20, behind).reference_id == bytes(
        [192, 0, 2, 1]
    )


@pytest.mark.parametrize(
    "code, kind",
    [
        (b"RATE", ntp.KissOfDeath),
        (b"DENY", ntp.KissOfDeath),
        (b"INIT", ntp.NotSynchronised),
        (b"STEP", ntp.NotSynchronised),
        (bytes(4), ntp.NotSynchronised),
    ],
)
def test_stratum_0_is_a_kiss_or_a_server_without_time(code, kind):
    request = ntp.request_packet(1_000 * S)
    with pytest.raises(kind):
        ntp_checks.check_reply(reply_to(request, stratum=0, reference_id=code), request)
