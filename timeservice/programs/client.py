"""The client program: ask a time server for the time and print the answer,
or how far this machine's clock is from the server's."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from .. import __version__
from ..clients.line import DEFAULT_HOST, DEFAULT_TIMEOUT, TimeClient
from ..clients.nts import NtsSession, ask_nts_once, establish
from ..clients.offset import Estimate, Sample, estimate, verdict
from ..clients.sampling import (
    NTP_SAMPLES,
    OFFSET_SAMPLES,
    spacing,
    take_samples,
)
from ..clients.standard import (
    PORTS,
    UnknownForm,
    ask_daytime,
    ask_ntp,
    ask_time,
    local_timestamp,
)
from ..nts import TlsError, Unavailable
from ..policy.logs import format_address
from ..wire.errors import ReplyError
from ..wire.line import DEFAULT_PORT, format_timestamp
from .options import (
    Parser,
    add_sampling_arguments,
    join_port,
    port_number,
    positive,
    program,
    program_name,
    say,
    seconds,
)


def printable(text: str, most: int = 256) -> str:
    """A line a server sent, to print as the answer: its control characters
    escaped (an escape sequence would reach the terminal raw), and at most
    `most` characters of it."""
    escaped = "".join(
        char if char.isprintable() else repr(char)[1:-1] for char in text[:most]
    )
    return escaped + "..." if len(text) > most else escaped


def offset_line(result: Estimate) -> str:
    """The estimate in one line for people."""
    return (
        f"offset {result.offset:+.6f} s ± {result.error:.6f} s, "
        f"delay {result.delay:.6f} s (best of {len(result.samples)}; "
        f"{verdict(result.offset, result.error)})"
    )


def offset_json(result: Estimate, server: str) -> str:
    """The estimate as one line of JSON for scripts; times are seconds. Its
    `samples` are the Estimate's: each sample's offset, bound and delay."""
    best = result.best
    return json.dumps(
        {
            "server": server,
            "offset": round(result.offset, 9),
            "error": round(result.error, 9),
            "delay": round(result.delay, 9),
            "samples": [
                {
                    "offset": round(sample.offset, 9),
                    "error": round(sample.error, 9),
                    "delay": round(sample.delay, 9),
                }
                for sample in result.samples
            ],
            "t1": local_timestamp(best.t1_ns),
            "ts": best.answer,
            "t4": local_timestamp(best.t4_ns),
        }
    )


def ask(args: argparse.Namespace, session: NtsSession | None = None) -> Sample | str:
    """One answer by the protocol the arguments name: a Sample, or the text of
    a daytime form this client does not read. NTS asks in `session`."""
    where = (args.host, args.port)
    if session is not None:
        return ask_nts_once(
            session, timeout=args.timeout, max_distance=args.max_distance
        )
    if args.protocol == "ntp":
        return ask_ntp(*where, timeout=args.timeout, max_distance=args.max_distance)
    if args.protocol == "time":
        return ask_time(*where, udp=args.udp, timeout=args.timeout)
    try:
        return ask_daytime(*where, udp=args.udp, timeout=args.timeout)
    except UnknownForm as unknown:
        if args.offset:
            raise
        return unknown.text  # printed as it came


def collect(args: argparse.Namespace) -> tuple[Estimate | None, Exception | None]:
    """Ask as the arguments say; print each answer unless only the estimate's
    JSON is wanted (with --json alone, each as a line of JSON). The estimate,
    if asked for, and the failure that ended the sampling early."""
    default = NTP_SAMPLES if args.protocol in ("ntp", "nts") else OFFSET_SAMPLES
    count = args.count or (default if args.offset else 1)
    where = format_address((args.host, args.port))

    def show(text: str, sample: Sample | None = None) -> None:
        if args.json:
            say(answer_json(where, args.protocol, text, sample))
        else:
            say(printable(text))  # a server's text, whatever it sent

    if args.protocol == "line":
        with TimeClient(args.host, args.port, args.timeout) as client:
            if args.offset:
                return client.measure_offset(count), None
            for _ in range(count):
                show(format_timestamp(client.get_time()))
        return None, None

    session = None
    if args.protocol == "nts":
        session = establish(args.host, args.port, ca=args.ca, timeout=args.timeout)

    def ask_and_show() -> Sample | str:
        answer = ask(args, session)
        if isinstance(answer, str):
            show(answer)
        else:
            show(answer.answer, answer)
        return answer

    answers, failure = take_samples(
        ask_and_show, count, spacing(args.protocol, args.burst)
    )
    samples = [answer for answer in answers if isinstance(answer, Sample)]
    return (estimate(samples) if args.offset else None), failure


def answer_json(where: str, protocol: str, text: str, sample: Sample | None) -> str:
    """One answer as one line of JSON for scripts: the server, the protocol,
    the answer as it came; with a Sample, its offset, bound and delay in
    seconds."""
    line: dict[str, object] = {"server": where, "protocol": protocol, "answer": text}
    if sample is not None:
        line |= {
            "offset": round(sample.offset, 9),
            "error": round(sample.error, 9),
            "delay": round(sample.delay, 9),
        }
    return json.dumps(line)


@program("timeservice.client")
def main(argv: Sequence[str] | None = None) -> int:
    """Ask a time server for the time and print the answer."""
    prog = program_name("timeservice.client")
    parser = Parser(
        prog=prog,
        description="Ask a time server for the date and time and print it.",
        epilog=f"examples: {prog} 192.0.2.10 {DEFAULT_PORT}; "
        f"{prog} --protocol ntp --offset 192.0.2.10",
    )
    parser.add_argument(
        "host",
        nargs="?",
        default=DEFAULT_HOST,
        help="server, HOST or HOST:PORT ([IPV6]:PORT) (default: %(default)s)",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_number,
        help="server port (default: the protocol's, "
        + ", ".join(f"{name} {port}" for name, port in PORTS.items())
        + ")",
    )
    parser.add_argument(
        "--protocol",
        choices=PORTS,
        default="line",
        help="line: this project's 'send time'; daytime: RFC 867; time: RFC 868; "
        "ntp: RFC 5905; nts: NTP authenticated with Network Time Security, "
        "RFC 8915, HOST[:PORT] its Key Establishment (default: %(default)s)",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="with --protocol nts: trust the certificates in FILE (PEM), a lab's "
        "CA say, instead of the system's",
    )
    parser.add_argument(
        "--udp",
        action="store_true",
        help="ask daytime or time over UDP instead of TCP (NTP is always UDP)",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=positive(int),
        metavar="N",
        help=f"ask N times (the line protocol over one connection; default: 1, "
        f"with --offset {OFFSET_SAMPLES}, {NTP_SAMPLES} for NTP)",
    )
    parser.add_argument(
        "--offset",
        action="store_true",
        help="estimate how far the local clock is from the server's, from the "
        "answer with the tightest bound (Cristian's algorithm; NTP's for ntp)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each answer as one line of JSON; with --offset, the "
        "estimate as one line of JSON instead",
    )
    add_sampling_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="limit for the connect and for each reply (default: %(default)s)",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    args = parser.parse_args(argv)
    if args.udp and args.protocol not in ("daytime", "time"):
        parser.error("--udp goes with --protocol daytime or time")
    if args.ca is not None and args.protocol != "nts":
        parser.error("--ca goes with --protocol nts")
    args.host, args.port = join_port(parser, args.host, args.port)
    if args.port is None:
        args.port = PORTS[args.protocol]

    where = format_address((args.host, args.port))
    try:
        quiet = args.json and args.offset  # the estimate's JSON alone
        with contextlib.redirect_stdout(io.StringIO()) if quiet else nullcontext():
            result, stopped = collect(args)
    except (OSError, ReplyError, UnicodeError, TlsError, Unavailable) as exc:
        print(f"{prog}: {failure_line(exc, where, args)}", file=sys.stderr)
        return 1
    if stopped is not None:  # the samples taken before it stand
        problem = failure_line(stopped, where, args)
        print(f"{prog}: stopped asking: {problem}", file=sys.stderr)
    if result is not None and args.json:
        say(offset_json(result, where))
    elif result is not None:
        if args.protocol == "line":
            for sample in result.samples:
                say(sample.answer)
        say(offset_line(result))
    return 0


def failure_line(exc: Exception, where: str, args: argparse.Namespace) -> str:
    """Why asking `where` failed, in one line for people."""
    if isinstance(exc, ReplyError):
        return f"{where}: {exc}"
    if isinstance(exc, Unavailable):
        return str(exc)
    if isinstance(exc, TlsError):
        return f"{where}: NTS-KE over TLS failed: {exc}"
    if isinstance(exc, UnicodeError):  # IDNA: "a..b", a label over 63 characters
        return f"cannot resolve {args.host!r}: not a host name ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        problem = f"connection refused by {where}: is the server running?"
    elif isinstance(exc, TimeoutError):
        problem = f"no answer from {where} within {args.timeout:g} s"
    elif isinstance(exc, socket.gaierror):
        problem = f"cannot resolve {args.host!r}: {exc.strerror}"
    else:
        assert isinstance(exc, OSError)
        problem = f"cannot talk to {where}: {exc.strerror or exc}"
    return problem + bracket_hint(args.host)


def bracket_hint(host: str) -> str:
    """For ``::1:8037``, taken whole as an IPv6 address that is none: how
    an IPv6 address goes with a port."""
    address, _, port = host.rpartition(":")
    if host.count(":") < 2 or not (port.isascii() and port.isdigit()):
        return ""
    return f" (an IPv6 address with a port goes in brackets: [{address}]:{port})"
