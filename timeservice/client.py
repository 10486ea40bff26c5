"""The time client: asks a time server for the time and prints the answer.

Run it with ``python -m timeservice.client [HOST] [PORT] [--protocol P] [--udp]``.
TimeClient speaks the line protocol; ask_daytime(), ask_time() and ask_ntp()
ask the standard protocols. Each answer is a Sample for timeservice.offset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any, TypeVar

from . import __version__, daytime, ntp, rfc868
from .cli import (
    format_address,
    port_number,
    positive,
    program,
    program_name,
    seconds,
    split_host_port,
)
from .offset import NANOSECONDS, Estimate, Sample, estimate, timestamp_ns, verdict
from .protocol import (
    DEFAULT_PORT,
    MAX_REPLY_BYTES,
    REQUEST,
    ReplyError,
    format_timestamp,
    parse_reply,
    parse_timestamp,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 5.0
# A server that names whole seconds may read them from a clock that moves
# once a tick, as glibc's time() on Linux does (xinetd's Daytime and Time):
# it can name the second that ended up to a tick ago. 10 ms is the longest
# Linux tick (HZ=100).
COARSE_CLOCK = 10_000_000  # ns
OFFSET_SAMPLES = 8
# NTP requests are paced as ntpd's "discard minimum" expects of a client,
# 2 s apart, as chronyd's iburst sends its first four: a client cannot tell
# whose server it asks. --burst sends them back to back.
NTP_SAMPLES = 4
NTP_SPACING = 2.0  # seconds
PORTS = {
    "line": DEFAULT_PORT,
    "daytime": daytime.DEFAULT_PORT,
    "time": rfc868.DEFAULT_PORT,
    "ntp": ntp.DEFAULT_PORT,
}
MAX_DATAGRAM = 512
T = TypeVar("T")


class TimeClient:
    """One connection to a time server; it can ask for the time many times.

    Use it as a context manager. `timeout` bounds the connect and each reply.
    After any error (a timeout, a reset, an ERR or invalid reply) the
    connection is closed, since a late answer to the failed request could
    pass for the next one; further calls raise ValueError until connect().
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._failed = False

    def __enter__(self) -> TimeClient:
        self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def connect(self) -> None:
        self.close()
        self._sock = socket.create_connection(self.address, self.timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def get_time(self) -> str:
        """Ask once; return the server's timestamp, or raise ReplyError or OSError."""
        with self._closed_on_error():
            return parse_reply(self._ask())

    def measure_offset(self, samples: int = OFFSET_SAMPLES) -> Estimate:
        """Estimate how far the local clock is from the server's (Cristian).

        Asks `samples` times and keeps the answer with the shortest round
        trip; see timeservice.offset.
        """
        taken = []
        with self._closed_on_error():
            for _ in range(samples):
                t1, start = time.time_ns(), time.monotonic_ns()
                line = self._ask()
                end, t4 = time.monotonic_ns(), time.time_ns()
                answer = parse_reply(line)
                ts = timestamp_ns(parse_timestamp(answer))
                taken.append(Sample(t1, ts, t4, end - start, answer))
        return estimate(taken)

    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if self._sock is not None:
                self.close()
                self._failed = True
            raise

    def _ask(self) -> bytes:
        if self._sock is None:
            after = " (closed after an error; call connect())" if self._failed else ""
            raise ValueError(f"not connected{after}")
        self._failed = False
        self._sock.sendall(REQUEST)
        return self._read_line(self._sock)

    def _read_line(self, sock: socket.socket) -> bytes:
        """One reply line, within the timeout however the server spreads its bytes."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise ReplyError(f"reply too long: {self._buffer[:40]!r}...")
            sock.settimeout(remaining(deadline))
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                if not self._buffer:
                    raise
                chunk = b""  # it sent, then closed over our unread request
            if not chunk:
                if self._buffer:  # a server of another protocol, as likely as not
                    raise ReplyError(
                        f"server closed the connection after {len(self._buffer)} "
                        f"bytes that are not a reply line: {shown(self._buffer)}"
                    )
                raise ReplyError("server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def remaining(deadline: float) -> float:
    """Seconds left before `deadline`; TimeoutError if none (a 0 timeout
    would make the socket non-blocking instead)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def shown(data: bytes | str, most: int = 64) -> str:
    """What a server sent, for a message: escaped (no byte of it can move the
    terminal's cursor or forge a line) and at most `most` characters of it."""
    text = repr(data[:most])
    return text + "..." if len(data) > most else text


def printable(text: str, most: int = 256) -> str:
    """A line a server sent, to print as the answer: its control characters
    escaped (an escape sequence would reach the terminal raw), and at most
    `most` characters of it."""
    escaped = "".join(
        char if char.isprintable() else repr(char)[1:-1] for char in text[:most]
    )
    return escaped + "..." if len(text) > most else escaped


def addresses(host: str, port: int, kind: socket.SocketKind) -> list[tuple]:
    """Each family and address a name resolves to, in the order to try them,
    looked up before any clock is read."""
    return [
        (family, address)
        for family, _, _, _, address in socket.getaddrinfo(host, port, type=kind)
    ]


def each_address(host: str, port: int, kind: socket.SocketKind, ask: Callable) -> Any:
    """`ask(family, address)` for each address of the name until one answers,
    as socket.create_connection() tries them: a refusal or an unreachable
    network moves on to the next; a timeout, or a reply, is final."""
    failure: OSError | None = None
    for family, address in addresses(host, port, kind):
        try:
            return ask(family, address)
        except TimeoutError:
            raise
        except OSError as exc:
            failure = exc
    assert failure is not None  # getaddrinfo() gives one address at least
    raise failure


def exchange(
    host: str, port: int, *, udp: bool, timeout: float, request: bytes = b""
) -> tuple[bytes, int, int, int]:
    """One answer to one datagram, or all a TCP server sends before it closes.

    Returns the bytes, the local clock before asking (t1) and after the
    answer (t4), and the monotonic time between, in nanoseconds. `timeout`
    bounds the whole exchange; each address of the name is tried.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM

    def ask(family: int, address: tuple) -> tuple[bytes, int, int, int]:
        with socket.socket(family, kind) as sock:
            deadline = time.monotonic() + timeout
            sock.settimeout(timeout)
            t1, start = time.time_ns(), time.monotonic_ns()
            sock.connect(address)
            if udp:
                sock.send(request)
                data = sock.recv(MAX_DATAGRAM)
            else:
                data = b""
                while len(data) <= daytime.MAX_REPLY_BYTES:
                    sock.settimeout(remaining(deadline))
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            end, t4 = time.monotonic_ns(), time.time_ns()
        return data, t1, t4, end - start

    return each_address(host, port, kind, ask)


def ask_daytime(
    host: str,
    port: int = daytime.DEFAULT_PORT,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str, Sample | None]:
    """Ask a Daytime server (RFC 867): its line, and a Sample if its form is known."""
    data, t1, t4, delay = exchange(host, port, udp=udp, timeout=timeout)
    text = data[: daytime.MAX_REPLY_BYTES].decode("utf-8", "replace").strip()
    if not text:
        raise ReplyError("server sent no time")
    try:
        reading = daytime.parse_daytime(text)
    except ValueError:
        return text, None
    ts = timestamp_ns(reading.moment)
    resolution = round(reading.resolution * NANOSECONDS)
    if resolution >= NANOSECONDS:
        resolution += COARSE_CLOCK
    answer = format_timestamp(reading.moment)
    return answer, Sample(t1, ts, t4, delay, answer, resolution)


def ask_time(
    host: str,
    port: int = rfc868.DEFAULT_PORT,
    *,
    udp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Sample:
    """Ask a Time server (RFC 868): whole seconds, in the era nearest this clock."""
    data, t1, t4, delay = exchange(host, port, udp=udp, timeout=timeout)
    if not data:
        raise ReplyError("server sent no time")
    try:
        seconds = rfc868.decode(data, near=t4 / NANOSECONDS)
    except ValueError as exc:
        raise ReplyError(str(exc)) from None
    ts = seconds * NANOSECONDS
    return Sample(t1, ts, t4, delay, local_timestamp(ts), NANOSECONDS + COARSE_CLOCK)


def ask_ntp(
    host: str,
    port: int = ntp.DEFAULT_PORT,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_distance: float = ntp.MAX_DISTANCE,
) -> Sample:
    """Ask an NTP server once, and check its reply as chrony does.

    Datagrams that do not answer this request (another origin) are passed
    over until `timeout`; a reply that fails RFC 5905's tests (a
    Kiss-o'-Death, an unsynchronised server, a root distance over
    `max_distance`...) raises ntp.NtpError.
    """

    def ask(family: int, address: tuple) -> tuple[bytes, bytes, int, int, int, int]:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            deadline = time.monotonic() + timeout
            t1, start = time.time_ns(), time.monotonic_ns()
            request = ntp.request_packet(t1)
            sent = ntp.Packet.unpack(request).transmit
            sock.send(request)
            other = b""  # the first datagram that is no answer to it
            for _ in range(64):  # strays are few; the deadline ends it anyway
                try:
                    sock.settimeout(remaining(deadline))
                    data = sock.recv(MAX_DATAGRAM)
                except TimeoutError:
                    if other:  # a server did answer, in another protocol
                        raise ReplyError(
                            f"server sent {len(other)} bytes that are not an NTP "
                            f"reply: {shown(other)}"
                        ) from None
                    raise
                end, t4 = time.monotonic_ns(), time.time_ns()
                if (
                    len(data) >= ntp.PACKET_BYTES
                    and ntp.Packet.unpack(data).origin == sent
                ):
                    return data, request, t1, t4, start, end
                other = other or data
            raise ReplyError("no reply to this request among 64 datagrams")

    data, request, t1, t4, start, end = each_address(host, port, socket.SOCK_DGRAM, ask)
    reply = ntp.check_reply(data, request, max_distance)
    t2 = ntp.from_timestamp(reply.receive, near_ns=t1)
    t3 = ntp.from_timestamp(reply.transmit, near_ns=t1)
    precision = 2.0**reply.precision
    if t3 - t2 > end - start:
        # Held longer than the whole round trip: its receive time is on
        # another clock (a kernel's, under a tool like faketime). Its
        # transmit time alone is read as any server's answer is.
        return Sample(
            t1,
            t3,
            t4,
            end - start,
            local_timestamp(t3),
            root_distance=reply.root_distance,
            precision=precision,
        )
    return Sample(
        t1,
        t2,
        t4,
        end - start,
        local_timestamp(t3),
        t3=t3,
        root_distance=reply.root_distance,
        precision=precision,
    )


def local_timestamp(nanoseconds: int) -> str:
    """A time on the local clock, in the form the server answers in."""
    seconds, rest = divmod(nanoseconds, NANOSECONDS)
    moment = datetime.fromtimestamp(seconds, timezone.utc).astimezone()
    return format_timestamp(moment.replace(microsecond=rest // 1000))


def offset_line(result: Estimate) -> str:
    """The estimate in one line for people."""
    return (
        f"offset {result.offset:+.6f} s ± {result.error:.6f} s, "
        f"delay {result.delay:.6f} s (best of {len(result.samples)}; "
        f"{verdict(result.offset, result.error)})"
    )


def offset_json(result: Estimate, server: str) -> str:
    """The estimate as one line of JSON for scripts; times are seconds."""
    best = result.best
    return json.dumps(
        {
            "server": server,
            "offset": round(result.offset, 9),
            "error": round(result.error, 9),
            "delay": round(result.delay, 9),
            "samples": len(result.samples),
            "t1": local_timestamp(best.t1),
            "ts": best.answer,
            "t4": local_timestamp(best.t4),
        }
    )


def spacing(protocol: str, burst: bool) -> float:
    """Seconds between the requests of one sampling: see NTP_SPACING."""
    return NTP_SPACING if protocol == "ntp" and not burst else 0.0


def take_samples(
    ask_once: Callable[[], T], count: int, seconds_apart: float = 0.0
) -> tuple[list[T], Exception | None]:
    """Up to `count` answers, `seconds_apart` apart. The first failure ends
    the sampling (a Kiss-o'-Death says stop, and a server that failed once
    is likely to again): it is raised if nothing was taken, else returned
    beside what was, which is kept."""
    taken: list[T] = []
    for number in range(count):
        if number and seconds_apart:
            time.sleep(seconds_apart)  # politeness, not synchronisation
        try:
            taken.append(ask_once())
        except (OSError, ReplyError) as exc:
            if not taken:
                raise
            return taken, exc
    return taken, None


def ask(args: argparse.Namespace) -> Sample | str:
    """One answer by the protocol the arguments name: a Sample, or the text of
    a daytime form this client does not read."""
    where = (args.host, args.port)
    if args.protocol == "ntp":
        return ask_ntp(*where, timeout=args.timeout, max_distance=args.max_distance)
    if args.protocol == "time":
        return ask_time(*where, udp=args.udp, timeout=args.timeout)
    text, sample = ask_daytime(*where, udp=args.udp, timeout=args.timeout)
    if sample is None and args.offset:
        raise ReplyError(f"cannot read the daytime form {shown(text)}")
    return text if sample is None else sample


def collect(args: argparse.Namespace) -> tuple[Estimate | None, Exception | None]:
    """Ask as the arguments say; print each answer unless only JSON is wanted.
    The estimate, if asked for, and the failure that ended the sampling early."""
    default = NTP_SAMPLES if args.protocol == "ntp" else OFFSET_SAMPLES
    count = args.count or (default if args.offset else 1)
    if args.protocol == "line":
        with TimeClient(args.host, args.port, args.timeout) as client:
            if args.offset:
                return client.measure_offset(count), None
            for _ in range(count):
                print(client.get_time(), flush=True)
        return None, None

    def ask_and_print() -> Sample | str:
        answer = ask(args)
        text = answer if isinstance(answer, str) else answer.answer
        print(printable(text), flush=True)  # a server's text, whatever it sent
        return answer

    answers, failure = take_samples(
        ask_and_print, count, spacing(args.protocol, args.burst)
    )
    samples = [answer for answer in answers if isinstance(answer, Sample)]
    return (estimate(samples) if args.offset else None), failure


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Ask a time server for the time and print the answer."""
    prog = program_name("timeservice.client")
    parser = argparse.ArgumentParser(
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
        "ntp: RFC 5905 (default: %(default)s)",
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
        help="with --offset: print the estimate as one line of JSON instead",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help=f"send NTP requests back to back, for a server you run yourself "
        f"(default: {NTP_SPACING:g} s apart, as servers expect of a client)",
    )
    parser.add_argument(
        "--max-distance",
        type=seconds,
        default=ntp.MAX_DISTANCE,
        metavar="SECONDS",
        help="refuse an NTP server whose root distance is more "
        "(default: %(default)s, RFC 5905's MAXDIST)",
    )
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
    if args.json and not args.offset:
        parser.error("--json goes with --offset")
    if args.udp and args.protocol == "line":
        parser.error("--udp goes with --protocol daytime or time")
    if args.host.count(":") < 2 or args.host.startswith("["):  # not a bare IPv6
        try:
            args.host, port = split_host_port(args.host)
        except ValueError as exc:
            parser.error(f"{args.host!r}: {exc}")
        if port is not None and args.port is not None:
            parser.error(f"the port is given twice: {port} and {args.port}")
        args.port = args.port if port is None else port
    if args.port is None:
        args.port = PORTS[args.protocol]

    where = format_address((args.host, args.port))
    try:
        with contextlib.redirect_stdout(io.StringIO()) if args.json else nullcontext():
            result, stopped = collect(args)
    except (OSError, ReplyError, UnicodeError) as exc:
        print(f"{prog}: {failure_line(exc, where, args)}", file=sys.stderr)
        return 1
    if stopped is not None:  # the samples taken before it stand
        problem = failure_line(stopped, where, args)
        print(f"{prog}: stopped asking: {problem}", file=sys.stderr)
    if result is not None and args.json:
        print(offset_json(result, where))
    elif result is not None:
        if args.protocol == "line":
            for sample in result.samples:
                print(sample.answer)
        print(offset_line(result))
    return 0


def failure_line(exc: Exception, where: str, args: argparse.Namespace) -> str:
    """Why asking `where` failed, in one line for people."""
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: is the server running?"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {args.timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {args.host!r}: {exc.strerror}"
    if isinstance(exc, UnicodeError):  # IDNA: "a..b", a label over 63 characters
        return f"cannot resolve {args.host!r}: not a host name ({exc})"
    if isinstance(exc, ReplyError):
        return f"{where}: {exc}"
    assert isinstance(exc, OSError)
    return f"cannot talk to {where}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
