"""Every wire format given anything at all: it returns a value or raises its
documented error, nothing else; and what is built from values reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from timeservice.clock import claims
from timeservice.wire import daytime, ntp, ntp_checks, rfc868
from timeservice.wire import line as protocol

S = 1_000_000_000

NOW = 1_796_000_000 * S  # 2026-11-30, nanoseconds since 1970

STATE = claims.server_state(None, 10, -20)

ports = st.integers(0, 65535)


# NTP, the server's side


@given(st.binary(max_size=100), ports)
def test_any_datagram_gets_a_valid_reply_or_none(data, port):
    reply = ntp.server_reply(data, STATE, NOW, lambda: NOW, port)
    if reply is None:
        assert ntp.kiss_of_death(data, source_port=port) is None
        return
    packet = ntp.Packet.unpack(reply)
    assert len(reply) == ntp.PACKET_BYTES == len(data)  # never larger
    assert packet.mode == ntp.MODE_SERVER
    assert packet.version == data[0] >> 3 & 7
    assert reply[24:32] == data[40:48]  # the origin, byte for byte


# NTP, the client's side

packets = st.builds(
    ntp.Packet,
    leap=st.integers(0, 3),
    version=st.integers(0, 7),
    mode=st.integers(0, 7),
    stratum=st.integers(0, 255),
    poll=st.integers(-128, 127),
    precision=st.integers(-128, 127),
    root_delay=st.integers(0, 2**32 - 1),
    root_dispersion=st.integers(0, 2**32 - 1),
    reference_id=st.binary(min_size=4, max_size=4),
    reference=st.integers(0, 2**64 - 1),
    origin=st.integers(0, 2**64 - 1),
    receive=st.integers(0, 2**64 - 1),
    transmit=st.integers(0, 2**64 - 1),
)


@given(packets)
def test_a_packet_reads_back_as_it_was_built(packet):
    assert ntp.Packet.unpack(packet.pack()) == packet


@given(st.binary(max_size=100))
def test_any_bytes_are_a_reply_the_client_uses_or_an_ntp_error(data):
    request = ntp.request_packet(NOW)
    try:
        ntp_checks.check_reply(data, request)
    except ntp.NtpError:
        pass


@given(packets, st.booleans())
def test_a_reply_the_client_takes_passes_every_test(packet, answering):
    request = ntp.request_packet(NOW)
    if answering:  # most of the interesting cases answer the request
        packet = ntp.Packet(
            **{**vars(packet), "origin": ntp.Packet.unpack(request).transmit}
        )
    try:
        reply = ntp_checks.check_reply(packet.pack(), request)
    except ntp.NtpError:
        return
    assert reply.mode == ntp.MODE_SERVER and reply.version in ntp.VERSIONS
    assert 1 <= reply.stratum <= ntp.MAX_STRATUM
    assert reply.leap != ntp.LEAP_UNSYNCHRONISED
    assert reply.receive and reply.transmit
    assert not ntp_checks.earlier(reply.transmit, reply.receive)
    assert reply.root_distance <= ntp.MAX_DISTANCE


@given(st.integers(-(2**31 - 1) * S, (2**31 - 1) * S))
def test_timestamps_read_back_in_the_nearest_era(offset_ns):
    moment = NOW + offset_ns  # within half an era (68 years) of now, either way
    back = ntp.from_timestamp(ntp.to_timestamp(moment), near_ns=NOW)
    assert abs(back - moment) <= 1


@given(st.text(max_size=20))
def test_any_text_is_a_reference_id_or_a_value_error(text):
    try:
        assert len(ntp.reference_id(text)) == 4
    except ValueError:
        pass


# RFC 868


@given(st.binary(max_size=16), st.floats(0, 2**33))
def test_any_time_reply_is_a_second_or_a_value_error(data, near):
    try:
        rfc868.decode(data, near)
    except ValueError:
        assert len(data) < 4


@given(st.integers(-(2**31) + 1, 2**31 - 1))
def test_a_second_reads_back_near_its_era(offset):
    second = NOW // S + offset
    assert rfc868.decode(rfc868.encode(second), near=NOW / S) == second


# Daytime and the line protocol

moments = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from(
        [
            UTC,
            timezone(timedelta(hours=5, minutes=30)),
            timezone(-timedelta(hours=8)),
        ]
    ),
)


@given(st.text(max_size=60))
def test_any_text_is_a_daytime_form_or_a_value_error(text):
    try:
        reading = daytime.parse_daytime(text)
    except ValueError:
        return
    assert reading.moment.utcoffset() is not None and reading.resolution > 0


@given(moments)
def test_our_daytime_line_reads_back(moment):
    offset = int(moment.utcoffset().total_seconds())
    line = daytime.daytime_line(
        protocol.TimeLines().line(protocol.timestamp_ns(moment), lambda s: offset)
    )
    assert daytime.parse_daytime(line.decode("ascii")).moment == moment


@given(st.binary(max_size=300))
def test_any_request_line_is_send_time_or_one_err_line(line):
    reason = protocol.request_error(line)
    try:
        assert protocol.parse_request(line) == protocol.COMMAND
        assert reason is None
    except protocol.RequestError as exc:
        assert reason == str(exc)
        reply = protocol.error_line(reason)
        assert reply.startswith(b"ERR ")
        assert reply.count(b"\n") == 1 and reply.endswith(b"\n")


@given(
    st.lists(st.sampled_from(" \t"), min_size=1, max_size=3),
    st.lists(st.sampled_from(" \t"), max_size=2),
    st.sampled_from(["send time", "SEND TIME", "Send Time", "sEnD tImE"]),
)
def test_send_time_in_any_case_and_spacing_is_send_time(middle, around, words):
    first, second = words.split()
    line = "".join(around) + first + "".join(middle) + second + "".join(around)
    assert protocol.parse_request(line.encode()) == protocol.COMMAND


@given(st.binary(max_size=100))
def test_any_reply_line_is_a_timestamp_or_a_reply_error(line):
    try:
        protocol.parse_timestamp(protocol.parse_reply(line))
    except protocol.ReplyError:
        pass


@given(moments)
def test_a_timestamp_reads_back(moment):
    text = protocol.format_timestamp(moment)
    assert protocol.parse_timestamp(text) == moment
