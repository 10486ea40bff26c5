"""Do these clocks agree, and which one is wrong? The arithmetic of the skew
check, pure: Marzullo's intersection (as RFC 5905 scans for it), the falsetickers,
the skew the readings prove, and the status a monitoring system reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The narrowest interval: a round trip of microseconds makes a bound of
# microseconds, and clocks that close do not need telling apart. 10 ms is
# RFC 5905's MINDISP, the least dispersion NTP ever allows a sample.
TOLERANCE = 0.01


OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Target:
    """Where to ask, and in which protocol."""

    text: str  # as given
    protocol: str
    host: str
    port: int


def intersection(
    intervals: Sequence[tuple[float, float]],
) -> tuple[float, float] | None:
    """The interval the most of `intervals` share, or None if no majority does.

    Marzullo's intersection, as RFC 5905 section 11.2.1 scans for it: with
    f = 0, 1, ... falsetickers allowed (fewer than half), the lowest point
    inside m - f intervals and the highest, which must not cross. The bounds
    here are hard error bounds (a clock is inside its interval), so RFC
    5905's further rule on the intervals' midpoints, made for NTP's
    statistical bounds, is not applied: intervals that overlap agree.
    Endpoints that touch count as overlapping.
    """
    count = len(intervals)
    # At one value, the starts come first going up and the ends going down:
    # touching intervals share their point.
    points = sorted(
        point for low, high in intervals for point in ((low, -1), (high, 1))
    )
    for allowed in range((count + 1) // 2):  # f < m / 2
        needed = count - allowed
        lowest = highest = None
        inside = 0
        for value, kind in points:
            inside -= kind
            if inside >= needed:
                lowest = value
                break
        inside = 0
        for value, kind in reversed(points):
            inside += kind
            if inside >= needed:
                highest = value
                break
        if lowest is not None and highest is not None and lowest <= highest:
            return lowest, highest
    return None


@dataclass(frozen=True)
class Reading:
    """A target's offset from this machine's clock, as measured."""

    target: Target
    offset: float  # seconds the target is ahead of this clock
    bound: float  # the offset is wrong by at most this
    delay: float

    def interval(self, tolerance: float = TOLERANCE) -> tuple[float, float]:
        """Where the target's clock may be: the bound, but at least `tolerance`."""
        width = max(self.bound, tolerance)
        return self.offset - width, self.offset + width


@dataclass(frozen=True)
class Failure:
    """A target that gave no reading: not resolved, not reached, refused,
    or not synchronised."""

    target: Target
    verdict: str  # "unresolvable", "unreachable", "refused", "not synchronised"
    reason: str

    @property
    def unreached(self) -> bool:
        """Whether the target was never reached: no answer at all."""
        return self.verdict in ("unresolvable", "unreachable")


def falsetickers(
    readings: Sequence[Reading],
    majority: tuple[float, float],
    tolerance: float = TOLERANCE,
) -> list[Reading]:
    """The readings whose intervals miss the majority's interval."""
    low, high = majority
    intervals = [(r, r.interval(tolerance)) for r in readings]
    return [r for r, (a, b) in intervals if b < low or a > high]


def largest_skew(readings: Sequence[Reading]) -> tuple[Reading, Reading] | None:
    """The two readings furthest apart (behind, ahead), or None for fewer than two."""
    if len(readings) < 2:
        return None
    ordered = sorted(readings, key=lambda reading: reading.offset)
    return ordered[0], ordered[-1]


def proven_skew(readings: Sequence[Reading]) -> tuple[float, Reading, Reading] | None:
    """The largest skew between two readings that their bounds cannot explain.

    For a ahead of b that is (a.offset - a.bound) - (b.offset + b.bound);
    the largest over all pairs is the highest low end less the lowest high
    end, found in one pass. None when every pair's intervals overlap.
    """
    if not readings:
        return None
    ahead = max(readings, key=lambda r: r.offset - r.bound)
    behind = min(readings, key=lambda r: r.offset + r.bound)
    skew = (ahead.offset - ahead.bound) - (behind.offset + behind.bound)
    return (skew, behind, ahead) if skew > 0 else None


def distance_from(interval: tuple[float, float]) -> float:
    """How far this clock (offset 0) is at least from the interval."""
    low, high = interval
    return max(low, -high, 0.0)


@dataclass(frozen=True)
class GroupVerdict:
    """What the readings say together, and the status for a monitoring system."""

    results: tuple[Reading | Failure, ...]  # in the order the targets came
    majority: tuple[float, float] | None
    false: tuple[Reading, ...]
    status: int
    summary: str
    skew: float  # the largest skew between two readings beyond their bounds
    distance: float  # how far this clock is at least from the majority

    @property
    def readings(self) -> tuple[Reading, ...]:
        """The targets that gave a reading, in the order they came."""
        return tuple(r for r in self.results if isinstance(r, Reading))

    @property
    def failures(self) -> tuple[Failure, ...]:
        """The targets that gave no reading, in the order they came."""
        return tuple(r for r in self.results if isinstance(r, Failure))

    @property
    def agree(self) -> tuple[Reading, ...]:
        """The readings inside the majority's interval: all but the falsetickers."""
        return tuple(r for r in self.readings if r not in self.false)


def judge(
    results: Sequence[Reading | Failure],
    warning: float,
    critical: float,
    tolerance: float = TOLERANCE,
    ignore_unreachable: bool = False,
) -> GroupVerdict:
    """Find the majority and the falsetickers, and the status the thresholds give.

    The thresholds apply to what the readings prove: the largest skew
    between any two targets that answered beyond their bounds (a
    falseticker is the very clock to alert on), and how far this machine's
    clock is at least from the majority. A target known only to the second
    raises no alarm it cannot prove. Without a majority the skew still
    counts: two clocks 10 s apart are CRITICAL, whichever is wrong. No
    answer, or no majority and no skew past a threshold, is UNKNOWN. A
    target that could not be resolved or reached makes the status at least
    WARNING (a check that never reached a machine has checked nothing),
    unless `ignore_unreachable`.
    """
    results = tuple(results)
    readings = [r for r in results if isinstance(r, Reading)]
    failed = len(results) - len(readings)
    if not readings:
        summary = f"no target answered ({failed} failed)"
        return GroupVerdict(results, None, (), UNKNOWN, summary, 0.0, 0.0)
    majority = intersection([r.interval(tolerance) for r in readings])
    proven = proven_skew(readings)
    skew = 0.0 if proven is None else proven[0]
    if proven is None:
        parts = ["no skew beyond the bounds"]
    else:
        behind, ahead = proven[1].target.text, proven[2].target.text
        parts = [f"{ahead} is at least {skew:.6f} s ahead of {behind}"]
    if majority is None:  # which is right is unknown, how far apart is not
        status = CRITICAL if skew > critical else WARNING if skew > warning else UNKNOWN
        # UNKNOWN is no better than a target not reached: it stands.
        summary = "; ".join(
            [f"no majority: the {len(readings)} answers do not agree", *parts]
        )
        return GroupVerdict(results, None, (), status, summary, skew, 0.0)
    false = tuple(falsetickers(readings, majority, tolerance))
    distance = distance_from(majority)
    worst = max(skew, distance)
    status = CRITICAL if worst > critical else WARNING if worst > warning else OK
    if distance:
        parts.append(f"this clock is at least {distance:.6f} s off the majority")
    else:
        parts.append("this clock agrees with the majority")
    parts.append(f"{len(readings) - len(false)} of {len(readings)} agree")
    if false:
        parts.append(f"falseticker {', '.join(r.target.text for r in false)}")
    if failed:
        parts.append(f"{failed} without a reading")
    unreached = [r for r in results if isinstance(r, Failure) and r.unreached]
    if unreached and not ignore_unreachable:
        status = max(status, WARNING)
        parts.append(f"not reached: {', '.join(r.target.text for r in unreached)}")
    summary = "; ".join(parts)
    return GroupVerdict(results, majority, false, status, summary, skew, distance)
