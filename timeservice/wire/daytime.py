"""The Daytime protocol, RFC 867: the time as one line of text in no fixed form.

This server sends the line protocol's RFC 3339 timestamp, ending in CRLF as
the RFC recommends. A client meets other forms too: parse_daytime() reads
this one, the ctime() form inetd sends and the form xinetd sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_PORT = 13
MAX_REPLY_BYTES = 256

_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)", re.ASCII
)


@dataclass(frozen=True)
class Daytime:
    """A daytime answer: the moment, and how coarse it is.

    The server read its clock somewhere in [moment, moment + resolution).
    """

    moment: datetime
    resolution: float  # seconds


def daytime_line(time_line: bytes) -> bytes:
    """The line protocol's reply line, ending in CRLF instead of LF."""
    return time_line[:-1] + b"\r\n"


def parse_daytime(text: str) -> Daytime:
    """Read RFC 3339, ctime() (``Fri Nov 27 13:34:16 2026``, taken as local
    time, as inetd writes it) or xinetd's form (``27 NOV 2026 13:34:16 UTC``).
    ValueError for anything else.
    """
    text = text.strip()
    if match := _RFC3339.fullmatch(text):
        head, fraction, zone = match.groups()
        digits = (fraction or ".")[1:7]
        moment = datetime.fromisoformat(
            f"{head.replace('t', 'T').replace(' ', 'T')}"
            f"{'.' + digits.ljust(6, '0') if digits else ''}"
            f"{'+00:00' if zone in 'Zz' else zone}"
        )
        return Daytime(moment, 10.0 ** -len(digits) if digits else 1.0)
    words = text.split()
    for form, zone in (
        ("%a %b %d %H:%M:%S %Y", None),  # ctime(): the server's local time
        ("%d %b %Y %H:%M:%S", UTC),  # xinetd, followed by UTC
    ):
        try:
            if zone is None:
                moment = datetime.strptime(" ".join(words), form).astimezone()
            elif len(words) == 5 and words[4] in ("UTC", "GMT"):
                moment = datetime.strptime(" ".join(words[:4]), form)
                moment = moment.replace(tzinfo=zone)
            else:
                continue
        except (ValueError, OverflowError):  # OverflowError: beyond year 9999
            continue
        return Daytime(moment, 1.0)
    raise ValueError(f"not a daytime form this client reads: {text!r}")


def is_reply(datagram: bytes) -> bool:
    """Whether a datagram is itself a Daytime answer: a line of text that
    reads as a time in a form parse_daytime() knows. A Daytime server must
    not answer one, or two servers could answer each other forever."""
    if not datagram.strip() or len(datagram) > MAX_REPLY_BYTES:
        return False
    try:
        parse_daytime(datagram.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True
