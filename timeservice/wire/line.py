"""The line protocol as pure functions: parse a request line, build the reply line.

No sockets here, so the rules can be tested directly and with a fixed time.

Requests and replies are lines of UTF-8 text ending in LF; a CR before the LF
is dropped. The one request is ``send time`` (any case, any run of blanks
between the words, blanks around them ignored). Its reply is the server's
time as an RFC 3339 timestamp with six fractional digits and the UTC offset,
for example ``2026-11-27T10:15:42.000000+01:00``. Every error is one line
starting with ``ERR `` and a reason a person can read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

from .errors import ReplyError

__all__ = [
    "BUSY",
    "CLOCK_UNAVAILABLE",
    "COMMAND",
    "DEFAULT_PORT",
    "LINE_TOO_LONG",
    "MAX_LINE_BYTES",
    "MAX_REPLY_BYTES",
    "NOT_ALLOWED",
    "REQUEST",
    "SHUTTING_DOWN",
    "TIMEOUT",
    "ReplyError",
    "RequestError",
    "TimeLines",
    "error_line",
    "format_timestamp",
    "parse_reply",
    "parse_request",
    "parse_timestamp",
    "request_error",
    "strip_line_ending",
    "timestamp_ns",
]

COMMAND = "send time"


REQUEST = f"{COMMAND}\n".encode()


_USUAL_REQUEST = COMMAND.encode()


DEFAULT_PORT = 8037


MAX_LINE_BYTES = 256


MAX_REPLY_BYTES = 256


# The reasons of the ERR lines the server sends besides a request's own.
BUSY = "busy"  # at a connection limit: in all, this host's, this /64's
NOT_ALLOWED = "not allowed"  # by the access list
TIMEOUT = "timeout"  # no complete line within the idle timeout
SHUTTING_DOWN = "server shutting down"
LINE_TOO_LONG = "line too long"
CLOCK_UNAVAILABLE = "clock unavailable"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 but tab, DEL, C1


_TIMESTAMP = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(?:[+-]\d\d:\d\d|Z)", re.ASCII
)


class RequestError(ValueError):
    """A request line that is not ``send time``; the message is the reason."""


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 with exactly six fractional digits, so replies have one shape."""
    if moment.utcoffset() is None:
        raise ValueError("a timestamp needs a time zone")
    return moment.isoformat(timespec="microseconds")


def timestamp_ns(moment: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch, exactly."""
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


class TimeLines:
    """The reply line to ``send time`` for a moment in nanoseconds since
    1970 and a zone, as format_timestamp() writes it, several times faster:
    the date, the time of day and the offset change once a second, so they
    are formatted once a second (and the zone asked, `offset_of(second)`,
    seconds east of UTC), and only the microseconds on each line. One store
    updates what is kept, so threads may share one."""

    def __init__(self) -> None:
        self._second: tuple[int, bytes, bytes] = (-1, b"", b"")

    def line(self, now_ns: int, offset_of: Callable[[int], int]) -> bytes:
        """The reply line for `now_ns`, in the zone `offset_of(second)` gives."""
        second, nanoseconds = divmod(now_ns, 1_000_000_000)
        cached, head, tail = self._second
        if second != cached:
            zone = timezone(timedelta(seconds=offset_of(second)))
            text = datetime.fromtimestamp(second, zone).isoformat().encode("ascii")
            head, tail = text[:19] + b".", text[19:] + b"\n"
            self._second = second, head, tail
        return b"%b%06d%b" % (head, nanoseconds // 1000, tail)


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


def request_error(request: bytes) -> str | None:
    """Why a request line is not ``send time`` (the reason its ``ERR`` line
    carries), else None."""
    if request == _USUAL_REQUEST:  # the usual spelling needs no parsing
        return None
    try:
        parse_request(request)
    except RequestError as exc:
        return str(exc)
    return None


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
