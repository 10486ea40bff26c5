"""Time, RFC 868: the seconds since 1900 in 4 bytes, over TCP and UDP."""

from __future__ import annotations

from ..clock.system import Clock, nanoseconds_source
from ..wire import rfc868
from .oneshot import AnswerHandler


class TimeHandler(AnswerHandler):
    """RFC 868: 4 bytes, the seconds since 1900 modulo 2**32."""

    protocol = "time"

    @staticmethod
    def answer(clock: Clock) -> bytes:
        return rfc868.encode(nanoseconds_source(clock)() // 1_000_000_000)
