"""The clock the servers answer from: one interface, Clock, that every
protocol reads (the NTP and Time protocols its nanoseconds, the line
protocol and Daytime those and its zone's offset)."""

from __future__ import annotations

import time


class Clock:
    """The machine's clock, in its own time zone or in UTC (`utc`).

    now_ns() is the time in nanoseconds since 1970 (UTC); utc_offset(second)
    how far the zone is ahead of UTC at that second, in seconds. A subclass
    that overrides now_ns() is a clock of its own (shifted, fixed, failing),
    and `system` then says False: times the kernel took on the system clock
    (a datagram's receive time) are not on it.
    """

    def __init__(self, utc: bool = False) -> None:
        self.utc = utc
        self.system = type(self).now_ns is Clock.now_ns
        if self.system:  # the system clock itself, read with no frame between
            self.now_ns = time.time_ns  # type: ignore[method-assign]

    def now_ns(self) -> int:
        """The time now, in nanoseconds since 1970 (UTC); OSError if the clock fails."""
        return time.time_ns()

    def utc_offset(self, second: int) -> int:
        """Seconds east of UTC of this clock's zone at `second` (since 1970)."""
        if self.utc:
            return 0
        return time.localtime(second).tm_gmtoff or 0


local_clock = Clock()


utc_clock = Clock(utc=True)
