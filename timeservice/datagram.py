"""Serving over UDP: socketserver's UDPServer with a limit on every source.

A spoofed datagram makes a server send to a victim, so each source (an IPv4
address, an IPv6 /64) gets a token bucket of replies; what goes over it is
dropped and counted. Datagrams are answered in the serving thread: a reply
costs less than starting a thread.
"""

from __future__ import annotations

import collections
import logging
import socket
import socketserver
import struct
import sys
import time
from typing import Any

from . import capabilities
from .access import host_key as source_key
from .protocol import Clock, local_now
from .server import (
    AdmissionMixIn,
    AnyAddressMixIn,
    SettingsMixIn,
    format_address,
    serve_waiting,
)

__all__ = ["DatagramServer", "RateLimiter", "source_key"]

logger = logging.getLogger(__name__)

# Linux's SO_TIMESTAMPNS and SCM_TIMESTAMPNS, which Python names from 3.14 on.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@ll")
# Reads that return at once when nothing is waiting (not on Windows).
_DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)
# Room for the receive time in recvmsg()'s ancillary data (no CMSG_SPACE on Windows).
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


def stamp_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time in recvmsg()'s ancillary data, if it is there."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, ns = _TIMESPEC.unpack_from(value)
            return seconds * 1_000_000_000 + ns
    return None


def kernel_stamps_agree() -> bool:
    """Whether the kernel's receive times are on this process's clock.

    Tools like faketime shift the process's clock, not the kernel's, by any
    amount; a datagram sent to this process itself must be stamped between
    the clock's reads before and after it.
    """
    try:
        sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    except (OSError, AttributeError):  # no Unix datagram sockets here
        return False
    with sender, receiver:
        try:
            receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            receiver.settimeout(1.0)  # it is there at once; never wait long
            before = time.time_ns()
            sender.send(b"?")
            _, ancillary, _, _ = receiver.recvmsg(1, _STAMP_SPACE)
            after = time.time_ns()
        except OSError:
            return False
    stamp = stamp_of(ancillary)
    return stamp is not None and before <= stamp <= after


class RateLimiter:
    """A token bucket per source: `burst` replies at once, `rate` per second after.

    At most `sources` are remembered; the one heard from longest ago goes
    first, and a forgotten source starts again with a full bucket.
    """

    def __init__(self, rate: float, burst: int, sources: int = 65536) -> None:
        self.rate, self.burst, self.sources = rate, burst, sources
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = (
            collections.OrderedDict()
        )

    def allow(self, key: str, now: float) -> bool:
        """Take a token for `key` if it has one."""
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.sources:
            self._buckets.popitem(last=False)
        return allowed


class DatagramServer(
    SettingsMixIn, AdmissionMixIn, AnyAddressMixIn, socketserver.UDPServer
):
    """A UDP server that limits replies per source and reads no more than a datagram.

    Methods that may be overridden: over_limit(request, client_address) for
    a datagram over its source's limit (by default it is dropped).
    Settings: rate, burst (None turns the limit off), min_source_port
    (datagrams from lower ports are dropped, as inetd does against loops
    between services), max_packet_size, and AdmissionMixIn's (a denied
    source gets nothing). Class variable: batch, the most datagrams one
    wake-up answers of those already waiting. Handlers call drop(reason)
    for a datagram they do not answer and add to `answered`. The handler's
    request is ``(data, socket, receive_ns)``: the kernel's receive time
    where the platform gives it (SO_TIMESTAMPNS), else the time it was read.
    """

    settings: tuple[str, ...] = ("rate", "burst", "min_source_port", "clock")
    rate = 1.0  # replies per second per source, after the burst
    burst: int | None = 16  # replies a source may have at once
    min_source_port = 0
    clock: Clock = local_now
    max_packet_size = 512
    batch = 16  # datagrams answered per wake-up, at most
    allow_reuse_address = True

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.dropped: collections.Counter[str] = collections.Counter()
        self.kernel_timestamps = False  # set by socket_options() where it can be
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        self.limiter = (
            None if self.burst is None else RateLimiter(self.rate, self.burst)
        )

    def socket_options(self) -> None:
        super().socket_options()
        if capabilities.RECEIVE_TIMESTAMPS and kernel_stamps_agree():
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_timestamps = True
            except OSError:
                pass

    def get_request(self) -> tuple:
        return self._receive(0)

    def _receive(self, flags: int) -> tuple:
        if not self.kernel_timestamps:
            data, address = self.socket.recvfrom(self.max_packet_size, flags)
            return (data, self.socket, time.time_ns()), address
        data, ancillary, _, address = self.socket.recvmsg(
            self.max_packet_size, _STAMP_SPACE, flags
        )
        read = time.time_ns()
        kernel = stamp_of(ancillary)
        # A clock stepped since the start makes the kernel's time a lie too.
        if kernel is not None and 0 <= read - kernel < 1_000_000_000:
            return (data, self.socket, kernel), address
        return (data, self.socket, read), address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Answer the datagram, then those already waiting behind it, up to
        `batch` in all: one wake-up of serve_forever() then answers them all."""
        super().process_request(request, client_address)
        if _DONT_WAIT:
            serve_waiting(
                self,
                lambda: self._receive(_DONT_WAIT),
                super().process_request,
                self.batch - 1,
            )

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not super().verify_request(request, client_address):
            return False
        if client_address[1] < self.min_source_port:
            self.count_refusal("low_source_port", client_address)
            return False
        if self.limiter is None:
            return True
        if self.limiter.allow(source_key(client_address), time.monotonic()):
            return True
        self.count_refusal("rate_limited", client_address)
        return self.over_limit(request, client_address)

    def over_limit(self, request: Any, client_address: Any) -> bool:
        """A datagram over its source's limit: True to answer it anyway."""
        return False

    def drop(self, reason: str) -> None:
        """Count a datagram the handler will not answer."""
        with self._count_lock:
            self.dropped[reason] += 1

    def statistics(self) -> dict[str, Any]:
        counts = super().statistics()
        with self._count_lock:
            counts["errors"] = dict(self.dropped)
        return counts

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line in the log, never a traceback: a datagram is never worth one."""
        exc = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(exc, OSError) else logging.ERROR
        logger.log(level, "%s: %r", format_address(client_address), exc)
