"""The Time protocol, RFC 868: the seconds since 1900-01-01T00:00Z in 32 bits.

The count wraps on 2036-02-07T06:28:16Z; a sender sends the wrapped value, as
every implementation does, and a reader takes the era nearest its own clock,
as busybox rdate does. NTP counts its seconds the same way (RFC 5905).
"""

from __future__ import annotations

import struct

DEFAULT_PORT = 37
EPOCH_1900 = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01, both UTC
ERA = 2**32  # seconds in one turn of the 32-bit count
_SECONDS = struct.Struct("!I")


def to_1900(unix_seconds: int) -> int:
    """Seconds since 1900, modulo 2**32: what goes on the wire."""
    return (unix_seconds + EPOCH_1900) % ERA


def from_1900(value: int, near: float) -> int:
    """Unix seconds for a wrapped count, in the era nearest `near` (Unix seconds)."""
    reference = near + EPOCH_1900
    era = round((reference - value) / ERA)
    return value + era * ERA - EPOCH_1900


def encode(unix_seconds: int) -> bytes:
    """The 4 bytes a Time server sends for this second."""
    return _SECONDS.pack(to_1900(unix_seconds))


def is_reply(datagram: bytes) -> bool:
    """Whether a datagram is itself a Time answer: exactly 4 bytes, which no
    client sends (rdate sends an empty datagram). A Time server must not
    answer one, or two servers could answer each other forever."""
    return len(datagram) == _SECONDS.size


def decode(data: bytes, near: float) -> int:
    """The Unix second a Time server's reply stands for, nearest `near`.

    A reply is 4 bytes; inetutils-inetd (Debian's) sends 4 zero bytes
    after them, and rdate, busybox and nmap read the first four: so does this.
    """
    if len(data) < _SECONDS.size:
        raise ValueError(f"a Time reply is 4 bytes, not {len(data)}")
    (value,) = _SECONDS.unpack_from(data)
    return from_1900(value, near)
