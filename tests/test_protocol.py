"""The protocol's pure functions, with fixed clocks and no sockets."""

import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from timeservice.clock.system import SystemClock, respond
from timeservice.wire.errors import ReplyError
from timeservice.wire.line import (
    COMMAND,
    RequestError,
    error_line,
    format_timestamp,
    parse_reply,
    parse_request,
    parse_timestamp,
    strip_line_ending,
)

CET = timezone(timedelta(hours=1))
NEWFOUNDLAND = timezone(-timedelta(hours=3, minutes=30))


def fixed(moment):
    return lambda: moment


@pytest.mark.parametrize(
    "moment, text",
    [
        (
            datetime(2026, 11, 27, 10, 15, 42, 0, CET),
            "2026-11-27T10:15:42.000000+01:00",
        ),
        (
            datetime(2026, 11, 27, 10, 15, 42, 7, CET),
            "2026-11-27T10:15:42.000007+01:00",
        ),
        (
            datetime(2026, 1, 2, 3, 4, 5, 999999, NEWFOUNDLAND),
            "2026-01-02T03:04:05.999999-03:30",
        ),
        (
            datetime(2026, 6, 1, 0, 0, 0, 123456, timezone.utc),
            "2026-06-01T00:00:00.123456+00:00",
        ),
    ],
)
def test_format_timestamp_has_six_digits_and_the_offset(moment, text):
    assert format_timestamp(moment) == text
    assert parse_timestamp(text) == moment


def test_format_timestamp_refuses_a_naive_time():
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 11, 27, 10, 15, 42))


def test_parse_timestamp_accepts_z_for_utc():
    assert parse_timestamp("2026-11-27T10:15:42.000000Z") == datetime(
        2026, 11, 27, 10, 15, 42, tzinfo=timezone.utc
    )


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T10:15:42+01:00",  # no fraction
        "2026-11-27T10:15:42.000+01:00",  # three digits
        "2026-11-27T10:15:42.000000",  # no offset
        "2026-11-27 10:15:42.000000+01:00",  # space, not T
        "2026-13-27T10:15:42.000000+01:00",  # no 13th month
        " 2026-11-27T10:15:42.000000+01:00",
        "\u0662026-11-27T10:15:42.000000+01:00",  # an Arabic-Indic digit
        "",
    ],
)
def test_parse_timestamp_rejects_other_shapes(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    "line, stripped",
    [
        (b"send time\n", b"send time"),
        (b"send time\r\n", b"send time"),
        (b"send time", b"send time"),
        (b"send time\r", b"send time\r"),  # a lone CR is not a line ending
        (b"send time\r\r\n", b"send time\r"),
        (b"\n", b""),
    ],
)
def test_strip_line_ending(line, stripped):
    assert strip_line_ending(line) == stripped


@pytest.mark.parametrize(
    "request_",
    [b"send time", b"SEND TIME", b"Send Time", b"  send \t  time\t ", b"sEnD\t\ttImE"],
)
def test_parse_request_accepts_send_time_in_any_case_and_spacing(request_):
    assert parse_request(request_) == COMMAND


@pytest.mark.parametrize(
    "request_, reason",
    [
        (b"", "empty request"),
        (b" \t ", "empty request"),
        (b"send", "unknown request"),
        (b"time", "unknown request"),
        (b"send time now", "unknown request"),
        (b"sendtime", "unknown request"),
        (b"send  time please", "unknown request"),
        (b"\xff\xfesend time", "not UTF-8"),
        (b"send \xc3 time", "not UTF-8"),
        (b"send\x00time", "control character"),
        (b"send time\r", "control character"),
        (b"send\x1b[2Jtime", "control character"),
        (b"send\x7ftime", "control character"),
        ("send\u0085time".encode(), "control character"),
    ],
)
def test_parse_request_names_the_problem_and_the_valid_command(request_, reason):
    with pytest.raises(RequestError) as caught:
        parse_request(request_)
    assert reason in str(caught.value)
    assert "'send time'" in str(caught.value)


def test_respond_answers_with_the_clocks_time():
    clock = fixed(datetime(2026, 11, 27, 10, 15, 42, 0, CET))
    assert respond(b"send time", clock) == b"2026-11-27T10:15:42.000000+01:00\n"


def test_respond_asks_the_clock_once_per_request():
    calls = []

    def clock():
        calls.append(1)
        return datetime(2026, 11, 27, tzinfo=timezone.utc)

    respond(b"send time", clock)
    respond(b"nonsense", clock)
    assert len(calls) == 1


def test_respond_answers_a_bad_request_with_an_err_line():
    reply = respond(b"what time is it", fixed(datetime.now(timezone.utc)))
    assert reply == b"ERR unknown request, expected 'send time'\n"


def test_respond_uses_the_local_clock_by_default():
    before = datetime.now(timezone.utc)
    moment = parse_timestamp(respond(b"send time").decode().rstrip("\n"))
    after = datetime.now(timezone.utc)
    assert before <= moment <= after
    assert moment.utcoffset() == datetime.now().astimezone().utcoffset()


def test_error_line():
    assert error_line("busy") == b"ERR busy\n"


@pytest.mark.parametrize(
    "line",
    [
        b"2026-11-27T10:15:42.000000+01:00\n",
        b"2026-11-27T10:15:42.000000+01:00\r\n",
        b"2026-11-27T10:15:42.000000+01:00",
    ],
)
def test_parse_reply_returns_the_timestamp(line):
    assert parse_reply(line) == "2026-11-27T10:15:42.000000+01:00"


@pytest.mark.parametrize(
    "line, message",
    [
        (b"ERR busy\n", "server answered 'busy'"),
        (b"hello\n", "invalid reply b'hello\\n'"),
        (b"\xff\n", "invalid reply"),
        (b"", "invalid reply"),
    ],
)
def test_parse_reply_raises_for_errors_and_garbage(line, message):
    with pytest.raises(ReplyError, match=re.escape(message)):
        parse_reply(line)


def expected_line(nanoseconds, utc):
    """The reply line for an instant, built the slow way through datetime."""
    moment = datetime.fromtimestamp(nanoseconds // 10**9, timezone.utc)
    moment = moment.replace(microsecond=nanoseconds // 1000 % 10**6)
    if not utc:
        moment = moment.astimezone()
    return f"{format_timestamp(moment)}\n".encode()


@pytest.fixture(
    params=["UTC0", "CET-1CEST,M3.5.0,M10.5.0/3", "NST3:30NDT,M3.2.0,M11.1.0"]
)
def time_zone(request, monkeypatch):
    """The process's local time zone, for one test."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("utc", [False, True])
def test_system_clock_lines_match_format_timestamp(time_zone, utc, monkeypatch):
    instants = [
        1_795_774_542_000_000_000,  # 2026-11-27T10:15:42Z
        1_795_774_542_000_007_999,  # the same second again, from the cache
        1_795_774_542_999_999_999,  # the last microsecond of it
        1_795_774_543_000_000_000,  # the next second
        1_774_745_999_500_000_000,  # 2026-03-29T00:59:59.5Z, then
        1_774_746_000_000_000_000,  # Central Europe's clocks go forward
        1_792_889_999_999_999_000,  # 2026-10-25T00:59:59.999999Z, then
        1_792_890_000_000_000_000,  # they go back
        1_772_947_800_000_000_000,  # 2026-03-08T05:30:00Z: Newfoundland's go forward
        951_782_400_000_000_000,  # 2000-02-29T00:00:00Z
        0,
    ]
    clock = SystemClock(utc=utc)
    for instant in instants:
        monkeypatch.setattr(time, "time_ns", lambda instant=instant: instant)
        assert clock.line() == expected_line(instant, utc), (time_zone, instant)


@pytest.mark.parametrize("utc", [False, True])
def test_system_clock_called_is_the_current_time_with_its_offset(utc):
    clock = SystemClock(utc=utc)
    before = datetime.now(timezone.utc)
    moment = clock()
    assert before <= moment <= datetime.now(timezone.utc)
    offset = timedelta(0) if utc else datetime.now().astimezone().utcoffset()
    assert moment.utcoffset() == offset


def test_respond_with_the_system_clock_matches_format_timestamp(monkeypatch):
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_774_542_123_456_789)
    assert respond(b"send time", SystemClock(utc=True)) == (
        b"2026-11-27T10:15:42.123456+00:00\n"
    )
    assert respond(b"  SEND   TIME ", SystemClock(utc=True)) == (
        b"2026-11-27T10:15:42.123456+00:00\n"
    )
