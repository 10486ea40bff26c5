"""The system clock, read as the servers answer from it: a Clock is any
callable returning an aware datetime, and SystemClock formats its reply
line once a second for all but the microseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from ..wire.line import format_timestamp, request_error

Clock = Callable[[], datetime]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ns(moment: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch, exactly."""
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


class SystemClock:
    """The machine's clock, in its own time zone or in UTC.

    Called, it returns a datetime like any Clock. line() returns the reply
    line for the current time, as format_timestamp() would write it, several
    times faster: the date, the time of day and the offset change once a
    second, so they are formatted once a second and only the microseconds on
    each call.
    """

    def __init__(self, utc: bool = False) -> None:
        self.utc = utc
        self._second: tuple[int, bytes, bytes] = (-1, b"", b"")

    def __call__(self) -> datetime:
        return datetime.now(UTC) if self.utc else datetime.now().astimezone()

    def line(self) -> bytes:
        """The current time as a reply line; reply_source() uses it unless
        a subclass changes what __call__ returns."""
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        cached, head, tail = self._second
        if second != cached:
            head, tail = self._format_second(second)
            self._second = second, head, tail  # one store, so threads may share it
        return b"%b%06d%b" % (head, nanoseconds // 1000, tail)

    def _format_second(self, second: int) -> tuple[bytes, bytes]:
        fields = time.gmtime(second) if self.utc else time.localtime(second)
        zone = timezone(timedelta(seconds=fields.tm_gmtoff or 0))
        text = datetime(*fields[:6], tzinfo=zone).isoformat().encode("ascii")
        return text[:19] + b".", text[19:] + b"\n"


local_now = SystemClock()


utc_now = SystemClock(utc=True)


def respond(request: bytes, clock: Clock = local_now) -> bytes:
    """Return the reply line for one request line (without its line ending)."""
    return request_error(request) or time_line(clock)


def reply_source(clock: Clock) -> Callable[[], bytes]:
    """The function that makes the reply line to ``send time`` from `clock`.

    A SystemClock's fast line() reads the system clock, so it stands in for
    the clock only while __call__ is SystemClock's own: a subclass that
    shifts the time gets its own time formatted.
    """
    if type(clock).__call__ is SystemClock.__call__:
        return clock.line  # type: ignore[attr-defined]
    return lambda: f"{format_timestamp(clock())}\n".encode("ascii")


def nanoseconds_source(clock: Clock) -> Callable[[], int]:
    """The clock as nanoseconds since 1970; time.time_ns itself for the system
    clock (not for a subclass that shifts it), as reply_source() decides."""
    if type(clock).__call__ is SystemClock.__call__:
        return time.time_ns
    return lambda: timestamp_ns(clock())


def time_line(clock: Clock) -> bytes:
    """The reply line to ``send time``: the clock's time."""
    return reply_source(clock)()
