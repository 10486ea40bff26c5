"""Asking the daemon that synchronises this machine's clock (chronyd, ntpd)
what it claims, and believing only that daemon.

The NTP service claims what that daemon says: its stratum (one more), its
reference ID, its leap second. A process that answered in its place could
make the service claim anything, so an answer counts only from a socket that
root holds, or the user named as the daemon's (a daemon binds as root and
then drops its privileges; its socket shows root): /proc tells on Linux.
Where it cannot tell, only a port below 1024, which only root can bind, is
believed. A daemon on another host is the operator's to vouch for.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Collection

from ..host.local import LOCAL_ADDRESSES, SERVED_PORTS
from ..host.sockets import udp_owners
from ..policy.logs import format_address
from ..wire import ntp

logger = logging.getLogger(__name__)

PRIVILEGED_PORTS = 1024


def trusted(address: tuple, users: Collection[int]) -> bool:
    """Whether the socket that answers at `address` is the daemon's: held by
    one of `users` where this host can tell, else on a port only root binds."""
    host, port = address[:2]
    if host not in LOCAL_ADDRESSES:
        return True  # another host's: the operator named it
    owners = udp_owners(host, port)
    if owners is None:
        return port < PRIVILEGED_PORTS
    return bool(owners) and owners <= set(users)


class UpstreamQuery:
    """Asks the NTP server that synchronises this machine's clock (its
    daemon) what it claims, without ever waiting for it.

    current() sends a client request at most every `interval` seconds and
    reads the reply on a later call, so the serving loop never waits on the
    daemon. A reply is used only if it passes a client's checks, from a
    stratum below 15, from a socket trusted() holds, and for `usable`
    seconds after it was asked; a reply to the request that fails them ends
    the claim at once. An address of this host and a UDP port this process
    serves is never asked: the answer would be this server's own claim.
    Thread-safe.
    """

    interval = 8.0
    usable = 64.0

    def __init__(self, address: tuple, users: Collection[int] = (0,)) -> None:
        self.address, self.users = address, frozenset(users)
        self.source_id = ntp.reference_id(str(address[0]).split("%")[0])
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._request: bytes | None = None  # the request not answered yet
        self._sent = self._asked = -self.interval
        self._found: tuple[float, ntp.Upstream] | None = None  # asked at, claim
        self._untrusted_said = False

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
            reply = ntp.check_reply(data, request)
        except ntp.NtpError as exc:
            logger.debug("%s: %s", where, exc)
            return None
        if reply.stratum >= ntp.MAX_STRATUM:
            return None
        if not trusted(self.address, self.users):
            if not self._untrusted_said:  # once: it may answer every 8 s
                logger.warning(
                    "%s: not believed: the socket that answered is not held by "
                    "root or the daemon's user (--upstream-user)",
                    where,
                )
                self._untrusted_said = True
            return None
        self._untrusted_said = False
        return self._asked, ntp.Upstream.from_reply(reply, self.source_id)

    def close(self) -> None:
        """Close the socket to the daemon; the next request opens another."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._request = None
