"""The skew check's command line: ask many time servers at once, find the
interval most of them agree on, and print it in the monitoring plugins'
form (a status line with performance data; exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN); or, with --serve, be a Prometheus exporter that
does the same when scraped (see programs.exporter)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..clients.line import DEFAULT_TIMEOUT
from ..clients.selection import (
    STATUS,
    TOLERANCE,
    UNKNOWN,
    GroupVerdict,
    Reading,
    judge,
    largest_skew,
)
from ..clients.targets import Asking, measure_all, parse_target
from . import config, exporting, starting
from .options import (
    Parser,
    UsageError,
    add_sampling_arguments,
    positive,
    program,
    program_name,
    say,
    seconds,
)

logger = logging.getLogger(__name__)


def performance_data(verdict: GroupVerdict, warning: float, critical: float) -> str:
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


def status_line(verdict: GroupVerdict, warning: float, critical: float) -> str:
    """The monitoring status line: the status, the summary and the performance data."""
    data = performance_data(verdict, warning, critical)
    return f"SKEW {STATUS[verdict.status]}: {verdict.summary} | {data}"


def signed(value: float) -> str:
    """An offset with its sign, to the microsecond."""
    return f"{value:+.6f}"


def report(verdict: GroupVerdict) -> list[str]:
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


def as_json(verdict: GroupVerdict) -> str:
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


class MonitoringParser(Parser):
    """Usage errors are UNKNOWN (3), as monitoring plugins report them; one
    line, as every command's."""

    def error(self, message: str) -> NoReturn:
        """Say what is wrong in one line, and exit with status 3 (UNKNOWN);
        or, where `raising` (the exporter reloading), raise UsageError."""
        if self.raising:
            raise UsageError(message)
        self.exit(UNKNOWN, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@program("timeservice.skew", holds=starting.SERVED)
def main(argv: Sequence[str] | None = None) -> int:
    """Check the clocks of many machines against each other."""
    prog = program_name("timeservice.skew")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    args = parse_arguments(parser, argv)
    if args.serve is not None:
        if args.targets:
            parser.error("--serve takes its targets from each scrape, not here")
        return exporting.serve(
            prog, argv, args, lambda: build_parser(prog, raising=True)
        )
    starting.release(starting.SERVED)  # a command, not a server: as the system ends it
    if not args.targets:
        parser.error("a TARGET is needed (or --serve)")
    extra = [
        o
        for o in ("allow_target", "allow", "deny", "verbose", "config_path")
        if getattr(args, o)
    ]
    if extra:
        option = "config" if extra[0] == "config_path" else extra[0]
        parser.error(f"--{option.replace('_', '-')} goes with --serve")

    targets = []
    for text in args.targets:  # every one, before anything is asked
        try:
            targets.append(parse_target(text))
        except ValueError as exc:
            parser.error(f"bad target {text!r}: {exc}")
    asking = Asking(args.samples, args.timeout, args.burst, args.max_distance, args.ca)
    results = measure_all(targets, asking, args.parallel)
    verdict = judge(
        results, args.warning, args.critical, args.tolerance, args.ignore_unreachable
    )
    if args.json:
        say(as_json(verdict))
    else:
        say(status_line(verdict, args.warning, args.critical))
        say("\n".join(report(verdict)))
    return verdict.status


def parse_arguments(
    parser: MonitoringParser, argv: Sequence[str]
) -> argparse.Namespace:
    """The command line over the exporter's configuration file (--config;
    no file otherwise: the servers' TIMESERVICE_CONFIG is theirs)."""
    try:
        return config.parse(parser, argv, config.config_file(argv), environment=None)
    except config.ConfigError as exc:
        parser.error(str(exc))


def build_parser(prog: str, raising: bool = False) -> MonitoringParser:
    """The skew check's options, and the exporter's."""
    parser = MonitoringParser(
        prog=prog,
        raising=raising,
        description="Ask many time servers at once; find the interval most of "
        "them agree on (RFC 5905's intersection), the falsetickers, and how "
        "far this machine's clock is from the majority.",
        epilog=f"example: {prog} -c 1 ntp://192.0.2.1 ntp://192.0.2.2 "
        "192.0.2.3 time://[2001:db8::1]:37",
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="[PROTOCOL://]HOST[:PORT], PROTOCOL one of line (default), ntp, "
        "nts (PORT its Key Establishment's), time, daytime; an IPv6 address "
        "in brackets",
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
    add_sampling_arguments(parser)
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="trust the certificates in FILE (PEM) for nts:// targets, instead "
        "of the system's",
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
        "--ignore-unreachable",
        action="store_true",
        help="judge the targets that answered alone: by default one that cannot "
        "be resolved or reached makes the status at least WARNING",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead"
    )
    exporting.add_arguments(parser)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    return parser
