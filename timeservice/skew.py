"""Do these machines' clocks agree, and which one is wrong?

``python -m timeservice.skew TARGET ...`` asks every target at once, in any
of the four protocols, and finds the interval that the most of their
offset intervals share, as NTP's clock selection does (RFC 5905, section
11.2.1, after Marzullo): the targets whose intervals miss it are the
falsetickers. It prints in the monitoring plugins' form: one status line
with performance data, exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
The arithmetic is pure and comes first; the asking and the printing follow.
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import __version__, ntp
from .cli import positive, program, program_name, seconds, split_host_port
from .client import (
    DEFAULT_TIMEOUT,
    NTP_SPACING,
    PORTS,
    TimeClient,
    ask_daytime,
    ask_ntp,
    ask_time,
    shown,
    spacing,
    take_samples,
)
from .offset import Estimate, Sample, estimate
from .protocol import ReplyError

# The narrowest interval: a round trip of microseconds makes a bound of
# microseconds, and clocks that close do not need telling apart. 10 ms is
# RFC 5905's MINDISP, the least dispersion NTP ever allows a sample.
TOLERANCE = 0.01
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


# The arithmetic


@dataclass(frozen=True)
class Target:
    """Where to ask, and in which protocol."""

    text: str  # as given
    protocol: str
    host: str
    port: int


def parse_target(text: str) -> Target:
    """``[PROTOCOL://]HOST[:PORT]``, an IPv6 address in brackets; else ValueError."""
    protocol, separator, rest = text.partition("://")
    if not separator:
        protocol, rest = "line", text
    if protocol not in PORTS:
        raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PORTS)})")
    host, port = split_host_port(rest)
    return Target(text, protocol, host, PORTS[protocol] if port is None else port)


def intersection(
    intervals: Sequence[tuple[float, float]],
) -> tuple[float, float] | None:
    """The interval the most of `intervals` share, or None if no majority does.

    RFC 5905, section 11.2.1: with f = 0, 1, ... falsetickers allowed (fewer
    than half), scan the sorted endpoints up for the lowest point inside
    m - f intervals and down for the highest; the intervals' midpoints met
    outside must be no more than f, and the two points must not cross.
    Endpoints that touch count as overlapping.
    """
    count = len(intervals)
    points = sorted(
        point
        for low, high in intervals
        for point in ((low, -1), ((low + high) / 2, 0), (high, 1))
    )
    for allowed in range((count + 1) // 2):  # f < m / 2
        needed = count - allowed
        midpoints, inside = 0, 0
        lowest = highest = None
        for value, kind in points:
            inside -= kind
            if inside >= needed:
                lowest = value
                break
            midpoints += kind == 0
        inside = 0
        for value, kind in reversed(points):
            inside += kind
            if inside >= needed:
                highest = value
                break
            midpoints += kind == 0
        if midpoints <= allowed and lowest is not None and highest is not None:
            if lowest < highest:
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
    """A target that gave no reading: unreachable, refused or bad."""

    target: Target
    verdict: str  # "unreachable", "refused" or "bad target"
    reason: str


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
class Verdict:
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
        return tuple(r for r in self.results if isinstance(r, Reading))

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(r for r in self.results if isinstance(r, Failure))

    @property
    def agree(self) -> tuple[Reading, ...]:
        return tuple(r for r in self.readings if r not in self.false)


def judge(
    results: Sequence[Reading | Failure],
    warning: float,
    critical: float,
    tolerance: float = TOLERANCE,
) -> Verdict:
    """Find the majority and the falsetickers, and the status the thresholds give.

    The thresholds apply to what the readings prove: the largest skew
    between any two targets that answered beyond their bounds (a
    falseticker is the very clock to alert on), and how far this machine's
    clock is at least from the majority. A target known only to the second
    raises no alarm it cannot prove. Without a majority the skew still
    counts: two clocks 10 s apart are CRITICAL, whichever is wrong. No
    answer, or no majority and no skew past a threshold, is UNKNOWN.
    """
    results = tuple(results)
    readings = [r for r in results if isinstance(r, Reading)]
    failed = len(results) - len(readings)
    if not readings:
        summary = f"no target answered ({failed} failed)"
        return Verdict(results, None, (), UNKNOWN, summary, 0.0, 0.0)
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
        summary = "; ".join(
            [f"no majority: the {len(readings)} answers do not agree", *parts]
        )
        return Verdict(results, None, (), status, summary, skew, 0.0)
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
    summary = "; ".join(parts)
    return Verdict(results, majority, false, status, summary, skew, distance)


# Asking


@dataclass(frozen=True)
class Asking:
    """How each target is asked: samples, the limit of each exchange, NTP's
    pacing and the root distance it takes at most."""

    samples: int = 4
    timeout: float = DEFAULT_TIMEOUT
    burst: bool = False
    max_distance: float = ntp.MAX_DISTANCE


def measure(target: Target, asking: Asking) -> Reading | Failure:
    """Ask one target and keep the best of its samples; never raises."""
    try:
        best = ask_target(target, asking)
    except (socket.gaierror, UnicodeError) as exc:  # IDNA: "a..b", long labels
        reason = getattr(exc, "strerror", None) or str(exc)
        return Failure(target, "bad target", f"cannot resolve: {reason}")
    except TimeoutError:
        return Failure(target, "unreachable", f"no answer within {asking.timeout:g} s")
    except ConnectionRefusedError:
        return Failure(target, "unreachable", "connection refused")
    except OSError as exc:
        return Failure(target, "unreachable", exc.strerror or str(exc))
    except ReplyError as exc:
        return Failure(target, "refused", str(exc))
    return Reading(target, best.offset, best.error, best.delay)


def ask_target(target: Target, asking: Asking) -> Estimate:
    """The best of the samples, over one connection where the protocol has
    one; those taken before a failure (a Kiss-o'-Death) are kept."""
    where = (target.host, target.port)
    timeout = asking.timeout
    if target.protocol == "line":
        with TimeClient(*where, timeout) as client:
            return client.measure_offset(asking.samples)

    def ask_once() -> Sample:
        if target.protocol == "ntp":
            return ask_ntp(*where, timeout=timeout, max_distance=asking.max_distance)
        if target.protocol == "time":
            return ask_time(*where, timeout=timeout)
        text, sample = ask_daytime(*where, timeout=timeout)
        if sample is None:
            raise ReplyError(f"cannot read the daytime form {shown(text)}")
        return sample

    taken, _ = take_samples(
        ask_once, asking.samples, spacing(target.protocol, asking.burst)
    )
    return estimate(taken)


def measure_all(
    targets: Sequence[Target], asking: Asking, parallel: int
) -> list[Reading | Failure]:
    """Every target, at most `parallel` at a time, in the order given."""
    if not targets:
        return []
    results: list[Reading | Failure | None] = [None] * len(targets)
    waiting: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(targets)):
        waiting.put(index)

    def work() -> None:
        while True:
            try:
                index = waiting.get_nowait()
            except queue.Empty:
                return
            results[index] = measure(targets[index], asking)

    # Daemon threads, not a ThreadPoolExecutor's: after a Ctrl-C the program
    # ends at once, not when the slowest exchange times out.
    workers = [
        threading.Thread(target=work, name="timeservice skew", daemon=True)
        for _ in range(min(parallel, len(targets)))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [result for result in results if result is not None]


# Printing


def performance_data(verdict: Verdict, warning: float, critical: float) -> str:
    """After the ``|``, as check_ntp_time writes it: label=value;warn;crit;min;max."""
    total = len(verdict.results)
    return " ".join(
        [
            f"skew={verdict.skew:.6f}s;{warning:.6f};{critical:.6f};",
            f"offset={verdict.distance:.6f}s;{warning:.6f};{critical:.6f};",
            f"agree={len(verdict.agree)};;;0;{total}",
            f"falsetickers={len(verdict.false)};;;0;{total}",
            f"failed={len(verdict.failures)};;;0;{total}",
        ]
    )


def status_line(verdict: Verdict, warning: float, critical: float) -> str:
    data = performance_data(verdict, warning, critical)
    return f"SKEW {STATUS[verdict.status]}: {verdict.summary} | {data}"


def signed(value: float) -> str:
    return f"{value:+.6f}"


def report(verdict: Verdict) -> list[str]:
    """The table, one row per target, and the lines about the majority."""
    rows = [("target", "protocol", "offset s", "bound s", "delay s", "verdict")]
    for item in verdict.results:
        if isinstance(item, Reading):
            said = "falseticker" if item in verdict.false else "agrees"
            if verdict.majority is None:
                said = "no majority"
            figures = (signed(item.offset), f"±{item.bound:.6f}", f"{item.delay:.6f}")
            rows.append((item.target.text, item.target.protocol, *figures, said))
        else:
            said = f"{item.verdict} ({item.reason})"
            rows.append((item.target.text, item.target.protocol, "-", "-", "-", said))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            + [
                cell.rjust(width)
                for cell, width in zip(row[2:5], widths[2:], strict=True)
            ]
            + [row[5]]
        ).rstrip()
        for row in rows
    ]
    lines.append("")
    if verdict.majority is None:
        lines.append("majority: none")
        return lines
    low, high = verdict.majority
    middle, half = (low + high) / 2, (high - low) / 2
    lines.append(
        f"majority: {signed(middle)} s ± {half:.6f} s from this clock "
        f"({len(verdict.agree)} of {len(verdict.readings)} agree; RFC 5905 "
        "intersection)"
    )
    if low <= 0 <= high:
        where = "agrees with the majority"
    else:
        where = "is behind the majority" if middle > 0 else "is ahead of the majority"
    lines.append(f"this clock: {where} ({signed(-middle)} s ± {half:.6f} s)")
    pair = largest_skew(verdict.agree)
    if pair is None:
        lines.append("largest skew among those that agree: none (one target)")
    else:
        skew = pair[1].offset - pair[0].offset
        lines.append(
            f"largest skew among those that agree: {skew:.6f} s "
            f"± {pair[0].bound + pair[1].bound:.6f} s "
            f"({pair[0].target.text} to {pair[1].target.text})"
        )
    return lines


def as_json(verdict: Verdict) -> str:
    """One object for scripts: the status, the majority, every target."""
    targets = []
    for item in verdict.results:
        row: dict = {"target": item.target.text, "protocol": item.target.protocol}
        if isinstance(item, Reading):
            row.update(offset=item.offset, bound=item.bound, delay=item.delay)
            row["verdict"] = (
                "no majority"
                if verdict.majority is None
                else "falseticker"
                if item in verdict.false
                else "agrees"
            )
        else:
            row.update(verdict=item.verdict, reason=item.reason)
        targets.append(row)
    majority = None
    if verdict.majority is not None:
        low, high = verdict.majority
        majority = {"low": low, "high": high, "offset": (low + high) / 2}
    return json.dumps(
        {
            "status": STATUS[verdict.status],
            "code": verdict.status,
            "summary": verdict.summary,
            "majority": majority,
            "skew": verdict.skew,
            "distance": verdict.distance,
            "targets": targets,
        }
    )


class MonitoringParser(argparse.ArgumentParser):
    """Usage errors are UNKNOWN (3), as monitoring plugins report them."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(UNKNOWN, f"{self.prog}: error: {message}\n")


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Check the clocks of many machines against each other."""
    prog = program_name("timeservice.skew")
    parser = MonitoringParser(
        prog=prog,
        description="Ask many time servers at once; find the interval most of "
        "them agree on (RFC 5905's intersection), the falsetickers, and how "
        "far this machine's clock is from the majority.",
        epilog=f"example: {prog} -c 1 ntp://192.0.2.1 ntp://192.0.2.2 "
        "192.0.2.3 time://[2001:db8::1]:37",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="[PROTOCOL://]HOST[:PORT], PROTOCOL one of line (default), ntp, "
        "time, daytime; an IPv6 address in brackets",
    )
    parser.add_argument(
        "-n",
        "--samples",
        type=positive(int),
        default=4,
        metavar="N",
        help="samples per target, the best kept (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="limit for each exchange (default: %(default)s)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help=f"send NTP requests back to back, for servers you run yourself "
        f"(default: {NTP_SPACING:g} s apart, as servers expect of a client)",
    )
    parser.add_argument(
        "--max-distance",
        type=seconds,
        default=ntp.MAX_DISTANCE,
        metavar="SECONDS",
        help="refuse an NTP target whose root distance is more "
        "(default: %(default)s, RFC 5905's MAXDIST)",
    )
    parser.add_argument(
        "--parallel",
        type=positive(int),
        default=32,
        metavar="N",
        help="targets asked at once (default: %(default)s)",
    )
    parser.add_argument(
        "-w",
        "--warning",
        type=seconds,
        default=0.1,
        metavar="SECONDS",
        help="WARNING above this skew, or this clock this far from the majority "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "-c",
        "--critical",
        type=seconds,
        default=1.0,
        metavar="SECONDS",
        help="CRITICAL above this (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=seconds,
        default=TOLERANCE,
        metavar="SECONDS",
        help="the narrowest interval a target's clock is given: clocks closer "
        "than this agree (default: %(default)s, RFC 5905's MINDISP)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    args = parser.parse_args(argv)

    targets = []
    for text in args.targets:
        try:
            targets.append(parse_target(text))
        except ValueError as exc:
            print(f"{prog}: bad target {text!r}: {exc}", file=sys.stderr)
    results = []
    asking = Asking(args.samples, args.timeout, args.burst, args.max_distance)
    for result in measure_all(targets, asking, args.parallel):
        if isinstance(result, Failure) and result.verdict == "bad target":
            print(
                f"{prog}: bad target {result.target.text!r}: {result.reason}",
                file=sys.stderr,
            )
        else:
            results.append(result)
    verdict = judge(results, args.warning, args.critical, args.tolerance)
    if args.json:
        print(as_json(verdict))
    else:
        print(status_line(verdict, args.warning, args.critical))
        print("\n".join(report(verdict)))
    return verdict.status


if __name__ == "__main__":
    sys.exit(main())
