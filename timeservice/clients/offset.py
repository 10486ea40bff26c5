"""Cristian's algorithm: how far the local clock is from a time server's.

The client reads its own clock just before it asks (t1) and just after the
answer arrives (t4); the server read its clock (ts) somewhere in between.
Taking ts as the time at the midpoint gives the offset, wrong by at most half
the round trip (Cristian 1989). Of several samples the one with the shortest
round trip has the tightest bound; NTP's clock filter (RFC 5905) keeps that
one too. Pure arithmetic, so it is tested with numbers worked out by hand.

Two refinements for the standard protocols: a server that answers in whole
seconds (RFC 868, most daytime forms) read its clock anywhere in the second
it names, which widens the bound by that second; an NTP server says when it
received the request (T2) and when it answered (T3), so the time it spent is
taken out of the round trip, and its own root distance and precision are
added to the bound (RFC 5905, section 8; chrony shows the same bound after
``+/-``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NANOSECONDS = 1_000_000_000


@dataclass(frozen=True)
class Sample:
    """One request and its answer. Its fields are the clocks' readings in
    whole nanoseconds (since the epoch, or a duration), as the arithmetic
    needs them exact; its properties are seconds, as a float, as
    time.monotonic() and every other face give a duration."""

    t1_ns: int  # the local clock just before the request went out
    ts_ns: int  # the server's clock, as its answer says (NTP: when it received, T2)
    t4_ns: int  # the local clock just after the answer arrived
    elapsed_ns: int  # from sending to the answer, timed with a monotonic clock
    answer: str = ""  # the server's time as it came, or as RFC 3339
    resolution_ns: int = 0  # the server read its clock in [ts, ts + resolution)
    t3_ns: int | None = None  # NTP: when the server sent its answer
    root_distance: float = 0.0  # NTP: how far the server may be from true time, s
    precision: float = 0.0  # NTP: how finely the server reads its clock, s
    stratum: int = 0  # NTP: the server's stratum (0: not NTP)

    @property
    def delay_ns(self) -> int:
        """The network's part of the round trip: less the time the server held it."""
        held = 0 if self.t3_ns is None else self.t3_ns - self.ts_ns
        return self.elapsed_ns - held

    @property
    def delay(self) -> float:
        """The round trip on the network, in seconds (RFC 5905's delay)."""
        return self.delay_ns / NANOSECONDS

    @property
    def offset(self) -> float:
        """Seconds the server is ahead of the local clock (behind if negative)."""
        if self.t3_ns is not None:  # RFC 5905: ((T2 - T1) + (T3 - T4)) / 2
            return ((self.ts_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)) / 2e9
        return (2 * self.ts_ns + self.resolution_ns - self.t1_ns - self.t4_ns) / 2e9

    @property
    def error(self) -> float:
        """Seconds the offset can be wrong by: half the round trip, half the
        server's second where it answers in seconds, and for NTP its root
        distance and the precision it states (RFC 5905's dispersion)."""
        spread = self.delay_ns + self.resolution_ns
        return spread / 2 / NANOSECONDS + self.root_distance + self.precision


@dataclass(frozen=True)
class Estimate:
    """The offset from the best of several samples, and how sure it is; in
    seconds, as each Sample's properties."""

    best: Sample
    samples: tuple[Sample, ...]

    @property
    def offset(self) -> float:
        """Seconds the server is ahead of the local clock, by the best sample."""
        return self.best.offset

    @property
    def error(self) -> float:
        """Seconds the offset can be wrong by, by the best sample."""
        return self.best.error

    @property
    def delay(self) -> float:
        """The best sample's round trip, in seconds."""
        return self.best.delay


def estimate(samples: Sequence[Sample]) -> Estimate:
    """Keep the sample with the tightest bound: from one server, the shortest trip."""
    if not samples:
        raise ValueError("no samples")
    return Estimate(min(samples, key=lambda sample: sample.error), tuple(samples))


def verdict(offset: float, error: float) -> str:
    """The offset's sign in words, unless the error bound allows either sign."""
    if offset > error:
        return "local clock is behind the server"
    if offset < -error:
        return "local clock is ahead of the server"
    return "local clock agrees with the server within the error bound"
