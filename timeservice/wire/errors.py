"""What every client of every protocol may raise: a reply it must not use."""

from __future__ import annotations


class ReplyError(Exception):
    """A server's reply that a client must not use (an ERR line, bytes of
    another protocol, a failed NTP packet test); the message says why."""
