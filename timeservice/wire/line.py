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
from datetime import datetime

from .errors import ReplyError

__all__ = [
    "COMMAND",
    "DEFAULT_PORT",
    "MAX_LINE_BYTES",
    "MAX_REPLY_BYTES",
    "REQUEST",
    "ReplyError",
    "RequestError",
    "error_line",
    "format_timestamp",
    "parse_reply",
    "parse_request",
    "parse_timestamp",
    "request_error",
    "strip_line_ending",
]

COMMAND = "send time"


REQUEST = f"{COMMAND}\n".encode()


_USUAL_REQUEST = COMMAND.encode()


DEFAULT_PORT = 8037


MAX_LINE_BYTES = 256


MAX_REPLY_BYTES = 256


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


def request_error(request: bytes) -> bytes | None:
    """The ``ERR`` line for a request that is not ``send time``, else None."""
    if request == _USUAL_REQUEST:  # the usual spelling needs no parsing
        return None
    try:
        parse_request(request)
    except RequestError as exc:
        return error_line(str(exc))
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
