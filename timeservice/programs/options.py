"""What the command lines share: argument types, binding a server with one
clear line on failure, the start-up line, logging, and how every command
ends on Ctrl-C or a closed pipe."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn, TypeVar

from ..clients.sampling import NTP_SPACING
from ..clients.targets import split_host_port
from ..policy.logs import format_address
from ..wire import ntp
from . import starting

T = TypeVar("T")


def program_name(module: str) -> str:
    """What the user typed: the console script's name, or ``python -m MODULE``."""
    name = os.path.basename(sys.argv[0])
    return name if name.startswith("timeservice") else f"python -m {module}"


class UsageError(Exception):
    """Options or a configuration that cannot be used; the message is one line."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line: what is wrong and
    where help is, instead of the whole usage before it (exit status 2); or,
    where `raising` (a server reloading), a UsageError. `reloadable` holds
    the dests of the options that may change when a server reloads."""

    def __init__(self, *args: Any, raising: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raising = raising
        self.reloadable: set[str] = set()

    def error(self, message: str) -> NoReturn:
        """Say what is wrong in one line, and exit with status 2."""
        if self.raising:
            raise UsageError(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type for numbers above zero (and not NaN)."""

    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


MAX_SECONDS = 10**6  # eleven days: more than any wait here, less than a timer overflows


def seconds(text: str) -> float:
    """An argparse type for a duration: above 0, at most MAX_SECONDS (a
    socket's timeout cannot hold inf or 1e300)."""
    value = positive(float)(text)
    if not value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS}: {text}")
    return value


class OutputClosed(Exception):
    """What reads this program's output is gone (a closed pipe: ``| head``).

    Not an OSError: a caller that handles the network's OSErrors must not
    take it for the server's fault.
    """


class OutputFailed(Exception):
    """This program's output cannot be written (a full disk, a failed
    device); the message says why. Not an OSError, for the same reason as
    OutputClosed."""


def say(text: str) -> None:
    """Print one line of output at once; a closed pipe is OutputClosed, any
    other failure to write it OutputFailed."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed from None
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None


def program(
    module: str, *, holds: Collection[int] = ()
) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Make `main` the command ``python -m MODULE``'s main(): Ctrl-C ends it
    with status 130 and a closed pipe (``| head``) with 141, each quietly, as
    a shell expects, instead of with a traceback; an output that cannot be
    written (a full disk) is one line that says so, and status 1. The
    signals held since start-up (see starting) are released as it begins,
    but `holds`, which the command delivers itself once it handles them
    (the server: SIGTERM and SIGHUP)."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                starting.release([sig for sig in starting.HELD if sig not in holds])
                status = main(argv)
                flush_output()  # a closed pipe or a full disk fails here, if not before
                return status
            except KeyboardInterrupt:
                print(file=sys.stderr)  # the line the ^C was typed on ends
                return starting.INTERRUPTED
            except (BrokenPipeError, OutputClosed):
                # Nothing more can reach the reader; flushing at exit would fail
                # again, so what is left goes nowhere.
                quiet_stdout()
                return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1
            except OutputFailed as exc:
                quiet_stdout()
                prog = program_name(module)
                print(f"{prog}: cannot write the output: {exc}", file=sys.stderr)
                return 1
            finally:
                starting.release()

        return run

    return decorate


def flush_output() -> None:
    """Flush stdout; a closed pipe is OutputClosed, any other failure to
    write it OutputFailed."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None


def quiet_stdout() -> None:
    """Point stdout at the null device: what is left of it goes nowhere."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then deliver it.

    Ctrl-C raises KeyboardInterrupt wherever the main thread happens to be,
    even halfway through Thread.start(), after which nobody knows whether
    the thread runs. A block that starts or stops a thread under this runs
    whole. Outside the main thread, or where Ctrl-C is ignored or left to
    the system, there is nothing to hold.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if not callable(previous):
        yield
        return
    held: list[tuple[int, FrameType | None]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        previous(*held[0])


def port_number(text: str) -> int:
    """An argparse type for a TCP port; 0 means any free port."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def metrics_address(text: str) -> tuple[str, int]:
    """An argparse type for ``[ADDRESS:]PORT``; loopback when no address is given."""
    host, colon, port = text.rpartition(":")
    if not colon:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"put an IPv6 address in brackets: {text!r}")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535 or not host:
        raise argparse.ArgumentTypeError(f"not [ADDRESS:]PORT: {text!r}")
    return host, int(port)


def add_address_arguments(parser: argparse._ActionsContainer, port: int) -> None:
    """The -b ADDRESS and PORT arguments, as http.server has them; -b takes
    ADDRESS:PORT too. join_port() then makes them one address."""
    parser.add_argument(
        "-b",
        "--bind",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to listen on, or ADDRESS:PORT ([IPV6]:PORT); '::' for "
        "all IPv6 and IPv4, '0.0.0.0' for all IPv4 (default: %(default)s)",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_number,
        help=f"port to listen on, 0 for any free port (default: {port})",
    )


def join_port(
    parser: argparse.ArgumentParser, text: str, port: int | None
) -> tuple[str, int | None]:
    """HOST or HOST:PORT ([IPV6]:PORT), and a port that may be given apart:
    the host and the one port (None if neither names one). A bare IPv6
    address (``::1``) has no port; a port named twice is a usage error."""
    if not text or (text.count(":") >= 2 and not text.startswith("[")):
        return text, port
    try:
        host, in_text = split_host_port(text)
    except ValueError as exc:
        parser.error(f"{text!r}: {exc}")
    if in_text is not None and port is not None:
        parser.error(f"the port is given twice: {in_text} and {port}")
    return host, port if in_text is None else in_text


def add_sampling_arguments(parser: argparse._ActionsContainer) -> None:
    """--burst and --max-distance: how NTP servers are asked, and which of
    their answers are believed, for the client and the skew check alike."""
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


def listen(prog: str, host: str, port: int, make: Callable[[tuple], T]) -> T | None:
    """Bind a server with `make((host, port))`, or say in one line why it can't."""
    try:
        return make((host, port))
    except (OSError, UnicodeError) as exc:  # UnicodeError: IDNA refuses the name
        cannot_listen(prog, host, port, exc)
        return None


def cannot_listen(prog: str, host: str, port: int, exc: Exception) -> None:
    """The one line that says why a server cannot listen."""
    if isinstance(exc, UnicodeError):
        reason = f"not a host name ({exc})"
    else:
        reason = getattr(exc, "strerror", None) or str(exc)
    print(f"{prog}: cannot listen on {host} port {port}: {reason}", file=sys.stderr)


def announce(
    server: socketserver.BaseServer, name: str = "time", how: str = ""
) -> None:
    """Print the start-up line, with the address really bound (port 0 resolved)."""
    where = format_address(server.server_address)  # type: ignore[arg-type]
    say(f"Serving {name} on {where}{how} ...")


def configure_logging(level: int) -> None:
    """Log to stderr with a time stamp, from `level` up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")


def cpu_choice(text: str) -> str | int:
    """An argparse type for --cpu: a CPU number, ``auto`` or ``off``."""
    if text in ("auto", "off"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"not a CPU number, 'auto' or 'off': {text!r}")
