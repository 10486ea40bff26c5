"""Asking the daemon that synchronises this machine's clock (chronyd, ntpd)
what it claims, and believing only that daemon.

The NTP service claims what that daemon says: its stratum (one more), its
reference ID, its leap second. A process that answered in its place could
make the service claim anything, and no check after the fact can tell which
socket sent a datagram. So the daemon is asked only where the kernel vouches
for who answers: at a port below ``net.ipv4.ip_unprivileged_port_start``
(1024 unless changed), which only a privileged process can bind, on this
host or another (the query's socket is connected to it, so the kernel drops
a datagram from any other port). An address that cannot be vouched for is
refused when the query is made, so that a configuration that could be
forged never serves.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from ..host.local import LOCAL_ADDRESSES, SERVED_PORTS
from ..host.sockets import unprivileged_port_start
from ..policy.logs import format_address
from ..wire import ntp, ntp_checks

logger = logging.getLogger(__name__)


def unvouched(address: tuple) -> str | None:
    """Why a reply from `address` could come from a process other than the
    daemon, or None where only a privileged process can send it."""
    port, start = address[1], unprivileged_port_start()
    if port < start:
        return None
    return (
        f"{format_address(address)}: any local user can bind port {port} and "
        f"answer in the daemon's place; ask it on a port below {start} "
        "(its daemon's usual 123), or name what to claim with --upstream-stratum"
    )


class UpstreamQuery:
    """Asks the NTP server that synchronises this machine's clock (its
    daemon) what it claims, without ever waiting for it.

    current() sends a client request at most every `interval` seconds and
    reads the reply on a later call, so the serving loop never waits on the
    daemon. It asks only an address unvouched() finds nothing against
    (ValueError otherwise). A reply is used only if it passes a client's
    checks, from a stratum below 15, and for `usable` seconds after it was
    asked; a reply to the request that fails them ends the claim at once.
    An address of this host and a UDP port this process serves is never
    asked: the answer would be this server's own claim.
    Thread-safe.
    """

    interval = 8.0
    usable = 64.0

    def __init__(self, address: tuple) -> None:
        problem = unvouched(address)
        if problem is not None:
            raise ValueError(problem)
        self.address = address
        self.source_id = ntp.reference_id(str(address[0]).split("%")[0])
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._request: bytes | None = None  # the request not answered yet
        self._sent = self._asked = -self.interval
        self._found: tuple[float, ntp.Upstream] | None = None  # asked at, claim

    def current(self, now: float) -> tuple[ntp.Upstream, float] | None:
        """The daemon's claim and its age in seconds (now: monotonic), or None."""
        with self._lock:
            self._collect()
            if now - self._sent >= self.interval:
                self._ask(now)
            if self._found is None or now - self._found[0] > self.usable:
                return None
            asked, upstream = self._found
            return upstream, now - asked

    def _ask(self, now: float) -> None:
        self._sent = now
        host, port = self.address[:2]
        if port in SERVED_PORTS.ports and host in LOCAL_ADDRESSES:
            return  # this very process
        try:
            if self._sock is None:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
                self._sock.connect(self.address)
            self._request = ntp.request_packet(time.time_ns())
            self._sock.send(self._request)
            self._asked = now
        except OSError as exc:
            logger.debug("cannot ask %s: %s", format_address(self.address), exc)
            self.close()

    def _collect(self) -> None:
        """Read what has come since the last request: its answer, if any."""
        for _ in range(8):  # a few strays at most; the next request starts over
            if self._sock is None or self._request is None:
                return
            try:
                data = self._sock.recv(512)
            except BlockingIOError:
                return
            except OSError as exc:  # refused: no daemon there
                logger.debug("%s: %s", format_address(self.address), exc)
                self.close()
                return
            if data[24:32] != self._request[40:48]:
                continue  # a stray: it answers no request of ours
            request, self._request = self._request, None
            self._found = self._claim(data, request)

    def _claim(self, data: bytes, request: bytes) -> tuple[float, ntp.Upstream] | None:
        """What an answer to our request lets the service claim, or None."""
        where = format_address(self.address)
        try:
            reply = ntp_checks.check_reply(data, request)
        except ntp.NtpError as exc:
            logger.debug("%s: %s", where, exc)
            return None
        if reply.stratum >= ntp.MAX_STRATUM:
            return None
        return self._asked, ntp.Upstream.from_reply(reply, self.source_id)

    def close(self) -> None:
        """Close the socket to the daemon; the next request opens another."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._request = None
