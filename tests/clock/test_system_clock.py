"""The clock the servers answer from, and the reply lines made of it."""

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from timeservice.clock.system import Clock
from timeservice.wire.line import TimeLines, format_timestamp, timestamp_ns

CET = timezone(timedelta(hours=1))


def test_the_system_clock_reads_the_current_time_in_its_zone():
    for utc in (False, True):
        clock = Clock(utc=utc)
        before = time.time_ns()
        now = clock.now_ns()
        assert before <= now <= time.time_ns()
        offset = 0 if utc else datetime.now().astimezone().utcoffset().seconds
        assert clock.utc_offset(now // 10**9) % 86400 == offset
        assert clock.system


def test_a_clock_of_its_own_is_no_system_clock():
    class Ahead(Clock):
        def now_ns(self) -> int:
            return time.time_ns() + 3600 * 10**9

    ahead = Ahead()
    assert not ahead.system
    assert ahead.now_ns() - time.time_ns() > 3599 * 10**9


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
    clock, lines = Clock(utc=utc), TimeLines()
    for instant in instants:
        assert lines.line(instant, clock.utc_offset) == expected_line(instant, utc), (
            time_zone,
            instant,
        )


def test_the_lines_of_a_clock_of_its_own_are_its_own():
    lines = TimeLines()
    moment = datetime(2026, 11, 27, 10, 15, 42, 0, CET)
    line = lines.line(timestamp_ns(moment), lambda second: 3600)
    assert line == b"2026-11-27T10:15:42.000000+01:00\n"
    assert lines.line(1_795_774_542_123_456_789, lambda second: 0) == (
        b"2026-11-27T10:15:42.123456+00:00\n"
    )
