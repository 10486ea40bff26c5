"""The time client: asks a time server for the time and prints the answer.

Run it with ``python -m timeservice.client [HOST] [PORT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone

from . import __version__
from .cli import format_address, port_number, positive, program_name
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
OFFSET_SAMPLES = 8


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
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise ReplyError("server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


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


def main(argv: Sequence[str] | None = None) -> int:
    """Ask a time server for the time and print the answer."""
    prog = program_name("timeservice.client")
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Ask a time server for the date and time and print it.",
        epilog=f"example: {prog} 192.0.2.10 {DEFAULT_PORT}",
    )
    parser.add_argument(
        "host", nargs="?", default=DEFAULT_HOST, help="server (default: %(default)s)"
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_number,
        default=DEFAULT_PORT,
        help="server port (default: %(default)s)",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=positive(int),
        metavar="N",
        help=f"ask N times over one connection (default: 1, with --offset "
        f"{OFFSET_SAMPLES})",
    )
    parser.add_argument(
        "--offset",
        action="store_true",
        help="estimate how far the local clock is from the server's, from the "
        "answer with the shortest round trip (Cristian's algorithm)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --offset: print the estimate as one line of JSON instead",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float),
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

    where = format_address((args.host, args.port))
    try:
        with TimeClient(args.host, args.port, args.timeout) as client:
            if args.offset:
                result = client.measure_offset(args.count or OFFSET_SAMPLES)
            else:
                for _ in range(args.count or 1):
                    print(client.get_time(), flush=True)
    except ConnectionRefusedError:
        problem = f"connection refused by {where}: is the server running?"
    except TimeoutError:
        problem = f"no answer from {where} within {args.timeout:g} s"
    except socket.gaierror as exc:
        problem = f"cannot resolve {args.host!r}: {exc.strerror}"
    except ReplyError as exc:
        problem = f"{where}: {exc}"
    except OSError as exc:
        problem = f"cannot talk to {where}: {exc.strerror or exc}"
    else:
        if args.json:
            print(offset_json(result, where))
        elif args.offset:
            for sample in result.samples:
                print(sample.answer)
            print(offset_line(result))
        return 0
    print(f"{prog}: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
