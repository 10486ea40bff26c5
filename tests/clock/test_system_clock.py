"""The system clock and the answer it gives to a request line."""

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from timeservice.clock.system import SystemClock, respond
from timeservice.wire.line import format_timestamp, parse_timestamp

CET = timezone(timedelta(hours=1))


def fixed(moment):
    return lambda: moment


def test_respond_answers_with_the_clocks_time():
    clock = fixed(datetime(2026, 11, 27, 10, 15, 42, 0, CET))
    assert respond(b"send time", clock) == b"2026-11-27T10:15:42.000000+01:00\n"


def test_respond_asks_the_clock_once_per_request():
    calls = []

    def clock():
        calls.append(1)
        return datetime(2026, 11, 27, tzinfo=UTC)

    respond(b"send time", clock)
    respond(b"nonsense", clock)
    assert len(calls) == 1


def test_respond_answers_a_bad_request_with_an_err_line():
    reply = respond(b"what time is it", fixed(datetime.now(UTC)))
    assert reply == b"ERR unknown request, expected 'send time'\n"


def test_respond_uses_the_local_clock_by_default():
    before = datetime.now(UTC)
    moment = parse_timestamp(respond(b"send time").decode().rstrip("\n"))
    after = datetime.now(UTC)
    assert before <= moment <= after
    assert moment.utcoffset() == datetime.now().astimezone().utcoffset()


def expected_line(nanoseconds, utc):
    """The reply line for an instant, built the slow way through datetime."""
    moment = datetime.fromtimestamp(nanoseconds // 10**9, UTC)
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
    before = datetime.now(UTC)
    moment = clock()
    assert before <= moment <= datetime.now(UTC)
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
