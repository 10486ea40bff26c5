"""What the command lines share: argument types, binding a server with one clear
line on failure, the start-up line, logging, signals and the server's CPU.
"""

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from . import capabilities
from .server import TimeServer, format_address

__all__ = ["format_address"]  # re-exported for the client

logger = logging.getLogger(__name__)
T = TypeVar("T")


def program_name(module: str) -> str:
    """What the user typed: the console script's name, or ``python -m MODULE``."""
    name = os.path.basename(sys.argv[0])
    return f"python -m {module}" if name.endswith(".py") else name


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


seconds.__name__ = "float"


def program(main: Callable[..., int]) -> Callable[..., int]:
    """A command's main(): Ctrl-C ends it with status 130 and a closed pipe
    (``| head``) with 141, each quietly, as a shell expects, instead of with
    a traceback."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(file=sys.stderr)  # the line the ^C was typed on ends
            return 128 + signal.SIGINT
        except BrokenPipeError:
            # Nothing more can reach the reader; flushing at exit would fail
            # again, so what is left goes nowhere.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1

    return run


def port_number(text: str) -> int:
    """An argparse type for a TCP port; 0 means any free port."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def split_host_port(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``, as the host and
    the port (None if not given); ValueError for anything else."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not host or (after and not after.startswith(":")):
            raise ValueError("an IPv6 address goes in brackets: [2001:db8::1]:123")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 address goes in brackets: [2001:db8::1]:123")
        if not colon:
            port_text = None
    if not host:
        raise ValueError("no host")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"not a port number: {port_text!r}")
    return host, int(port_text)


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


def add_address_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """The -b ADDRESS and PORT arguments, as http.server has them."""
    parser.add_argument(
        "-b",
        "--bind",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to listen on; '::' for all IPv6 and IPv4, "
        "'0.0.0.0' for all IPv4 (default: %(default)s)",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=port_number,
        default=port,
        help="port to listen on, 0 for any free port (default: %(default)s)",
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


def open_server(
    prog: str, args: argparse.Namespace, **settings: Any
) -> TimeServer | None:
    """Bind the line protocol's server as the arguments say, or say why it can't."""
    return listen(
        prog, args.bind, args.port, lambda address: TimeServer(address, **settings)
    )


def announce(
    server: socketserver.BaseServer, name: str = "time", how: str = ""
) -> None:
    """Print the start-up line, with the address really bound (port 0 resolved)."""
    where = format_address(server.server_address)  # type: ignore[arg-type]
    print(f"Serving {name} on {where}{how} ...", flush=True)


def configure_logging(level: int) -> None:
    """Log to stderr with a time stamp, from `level` up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")


# SIGBREAK is Ctrl-Break on Windows, which has no SIGTERM from other processes.
STOP_SIGNALS = [
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGBREAK")
    if hasattr(signal, name)
]


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While in the block, SIGINT and SIGTERM call `stop` in a thread of its own.

    A thread, because the signal handler runs in the thread that serves,
    and socketserver's shutdown() waits for that very thread.
    """

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s received, shutting down", signal.Signals(signum).name)
        threading.Thread(target=stop).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Account(NamedTuple):
    """Who a server serves as once its sockets are bound."""

    user: str
    uid: int
    group: str
    gid: int


def find_account(user: str, group: str | None = None) -> Account:
    """The account `user` names, in `group` or the user's own; else LookupError.

    Checked before anything listens, so that a typo costs no half-started
    server. Only root can become another user.
    """
    try:
        import grp
        import pwd
    except ImportError:
        raise LookupError("--user needs a POSIX system") from None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"no such user: {user!r}") from None
    try:
        found = grp.getgrgid(entry.pw_gid) if group is None else grp.getgrnam(group)
    except KeyError:
        raise LookupError(f"no such group: {group or entry.pw_gid!r}") from None
    if os.geteuid() != 0 and (os.geteuid(), os.getegid()) != (
        entry.pw_uid,
        found.gr_gid,
    ):
        raise LookupError(f"only root can serve as another user or group ({user})")
    return Account(entry.pw_name, entry.pw_uid, found.gr_name, found.gr_gid)


def become(account: Account) -> None:
    """Drop to the account for good: its group alone, then its user.

    The supplementary groups go first and the user last, because each step
    needs the privileges the next one gives up.
    """
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(account.gid)
    os.setuid(account.uid)


def running_as_root() -> bool:
    """Whether the process runs as root (never on Windows)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def cpu_choice(text: str) -> str | int:
    """An argparse type for --cpu: a CPU number, ``auto`` or ``off``."""
    if text in ("auto", "off"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"not a CPU number, 'auto' or 'off': {text!r}")


def choose_cpu(choice: str | int) -> int | None:
    """The CPU to keep the server's threads on, or None to let them roam.

    ``auto`` keeps them on the CPU the kernel started the process on, when
    there are several CPUs and a GIL: threads on two CPUs hand the GIL to
    each other across them, and under load that costs more than the
    requests. Without a GIL they run in parallel, so they roam.
    """
    if choice == "off":
        return None
    if choice == "auto":
        cpus = capabilities.allowed_cpus()
        if len(cpus) < 2 or not capabilities.gil_enabled():
            return None
        current = capabilities.current_cpu()
        return current if current in cpus else min(cpus)
    return int(choice)


@contextlib.contextmanager
def kept_on_cpu(cpu: int | None) -> Iterator[None]:
    """Keep this thread, and the threads it starts, on `cpu` while in the block.

    Only ever a speed-up: where the platform cannot, or the kernel refuses,
    the block runs anyway, on every CPU, after one warning.
    """
    before = capabilities.allowed_cpus()
    try:
        if cpu is not None:
            if not capabilities.CPU_AFFINITY:
                raise OSError("this platform has no CPU affinity")
            os.sched_setaffinity(0, {cpu})
            logger.debug("serving on CPU %d", cpu)
    except OSError as exc:
        why = exc.strerror or exc
        logger.warning("cannot keep to CPU %d (%s); using every CPU", cpu, why)
        cpu = None
    try:
        yield
    finally:
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)
