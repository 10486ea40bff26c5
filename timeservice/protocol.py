"""The time protocol as pure functions: parse a request line, build the reply line.

No sockets here, so the rules can be tested directly and with a fixed clock.

Requests and replies are lines of UTF-8 text ending in LF; a CR before the LF
is dropped. The one request is ``send time`` (any case, any run of blanks
between the words, blanks around them ignored). Its reply is the server's
time as an RFC 3339 timestamp with six fractional digits and the UTC offset,
for example ``2026-11-27T10:15:42.000000+01:00``. Every error is one line
starting with ``ERR `` and a reason a person can read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from .offset import timestamp_ns

COMMAND = "send time"
REQUEST = f"{COMMAND}\n".encode()
_USUAL_REQUEST = COMMAND.encode()
DEFAULT_PORT = 8037
MAX_LINE_BYTES = 256
MAX_REPLY_BYTES = 256

Clock = Callable[[], datetime]

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 but tab, DEL, C1
_TIMESTAMP = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(?:[+-]\d\d:\d\d|Z)", re.ASCII
)


class RequestError(ValueError):
    """A request line that is not ``send time``; the message is the reason."""


class ReplyError(Exception):
    """A reply that is an ``ERR`` line or not a timestamp at all."""


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 with exactly six fractional digits, so replies have one shape."""
    if moment.utcoffset() is None:
        raise ValueError("a timestamp needs a time zone")
    return moment.isoformat(timespec="microseconds")


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
        return datetime.now(timezone.utc) if self.utc else datetime.now().astimezone()

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


def parse_timestamp(text: str) -> datetime:
    """Read a timestamp in the form format_timestamp writes (``Z`` accepted)."""
    if not _TIMESTAMP.fullmatch(text):
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def strip_line_ending(line: bytes) -> bytes:
    """Drop the LF that ends a line and a CR just before it."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def parse_request(request: bytes) -> str:
    """Return the command a request line asks for, or raise RequestError."""
    try:
        text = request.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"request is not UTF-8, expected {COMMAND!r}") from None
    if _CONTROL.search(text):
        raise RequestError(f"control character in request, expected {COMMAND!r}")
    words = text.lower().split()
    if not words:
        raise RequestError(f"empty request, expected {COMMAND!r}")
    if words != COMMAND.split():
        raise RequestError(f"unknown request, expected {COMMAND!r}")
    return COMMAND


def error_line(reason: str) -> bytes:
    """The ``ERR`` line that carries a reason to the client."""
    return f"ERR {reason}\n".encode()


def respond(request: bytes, clock: Clock = local_now) -> bytes:
    """Return the reply line for one request line (without its line ending)."""
    return request_error(request) or time_line(clock)


def request_error(request: bytes) -> bytes | None:
    """The ``ERR`` line for a request that is not ``send time``, else None."""
    if request == _USUAL_REQUEST:  # the usual spelling needs no parsing
        return None
    try:
        parse_request(request)
    except RequestError as exc:
        return error_line(str(exc))
    return None


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


def parse_reply(line: bytes) -> str:
    """Return the timestamp a reply line carries, or raise ReplyError."""
    text = strip_line_ending(line).decode("utf-8", "replace")
    if text.startswith("ERR "):
        raise ReplyError(f"server answered {text[4:]!r}")
    try:
        parse_timestamp(text)
    except ValueError:
        raise ReplyError(f"invalid reply {line!r}") from None
    return text
