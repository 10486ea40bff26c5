"""The skew check's targets: ``[PROTOCOL://]HOST[:PORT]`` parsed, and each
asked in its protocol, many at once, every failure one row."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..nts import TlsError, Unavailable
from ..wire import ntp
from ..wire.errors import ReplyError
from .line import DEFAULT_TIMEOUT
from .measure import measure_offset
from .offset import Estimate
from .selection import Failure, Reading, Target
from .standard import PORTS


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


def parse_target(text: str) -> Target:
    """``[PROTOCOL://]HOST[:PORT]``, an IPv6 address in brackets; else ValueError."""
    protocol, separator, rest = text.partition("://")
    if not separator:
        protocol, rest = "line", text
    if protocol not in PORTS:
        raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PORTS)})")
    host, port = split_host_port(rest)
    return Target(text, protocol, host, PORTS[protocol] if port is None else port)


@dataclass(frozen=True)
class Asking:
    """How each target is asked: samples, the limit of each exchange, NTP's
    pacing and the root distance it takes at most, and for NTS the
    certificates trusted (a PEM file; None: the system's)."""

    samples: int = 4
    timeout: float = DEFAULT_TIMEOUT
    burst: bool = False
    max_distance: float = ntp.MAX_DISTANCE
    ca: str | None = None  # what NTS targets' certificates are trusted by


# What asking a target can raise that is its answer (or its silence), not
# a fault of this program: each is a Failure (failure_of()).
TARGET_ERRORS = (OSError, UnicodeError, ReplyError, TlsError, Unavailable)


def measure(target: Target, asking: Asking) -> Reading | Failure:
    """Ask one target and keep the best of its samples; never raises."""
    try:
        best = ask_target(target, asking)
    except TARGET_ERRORS as exc:
        return failure_of(target, exc, asking.timeout)
    return Reading(target, best.offset, best.error, best.delay)


def failure_of(target: Target, exc: BaseException, timeout: float) -> Failure:
    """The Failure that one of TARGET_ERRORS, raised asking `target` with
    `timeout`, says."""
    if isinstance(exc, (socket.gaierror, UnicodeError)):  # IDNA: "a..b"
        reason = getattr(exc, "strerror", None) or str(exc)
        return Failure(target, "unresolvable", f"cannot resolve: {reason}")
    if isinstance(exc, TimeoutError):
        return Failure(target, "unreachable", f"no answer within {timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return Failure(target, "unreachable", "connection refused")
    if isinstance(exc, OSError):
        return Failure(target, "unreachable", exc.strerror or str(exc))
    if isinstance(exc, ntp.NotSynchronised):
        return Failure(target, "not synchronised", str(exc))
    if isinstance(exc, TlsError):
        return Failure(target, "refused", f"TLS: {exc}")
    return Failure(target, "refused", str(exc))


def ask_target(target: Target, asking: Asking) -> Estimate:
    """The best of the samples, over one connection where the protocol has
    one; those taken before a failure (a Kiss-o'-Death) are kept."""
    return measure_offset(
        target.host,
        target.port,
        protocol=target.protocol,
        samples=asking.samples,
        timeout=asking.timeout,
        burst=asking.burst,
        max_distance=asking.max_distance,
        ca=asking.ca,
    )


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
