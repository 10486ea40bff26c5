"""Daytime, RFC 867: the time as one line, over TCP and UDP."""

from __future__ import annotations

from ..clock.system import Clock, reply_source
from ..wire.daytime import daytime_line
from .oneshot import AnswerHandler


class DaytimeHandler(AnswerHandler):
    """RFC 867: the time as one line, in the line protocol's form, ending in CRLF."""

    protocol = "daytime"

    @staticmethod
    def answer(clock: Clock) -> bytes:
        return daytime_line(reply_source(clock)())
