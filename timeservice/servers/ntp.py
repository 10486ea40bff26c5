"""NTP server mode (RFC 5905, the SNTP server of RFC 4330): the handler,
the server that never claims a synchronisation the machine lacks, and the
query that asks the daemon that synchronised the clock what to claim."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import Any

from ..clock import claims, kernel
from ..clock.system import nanoseconds_source
from ..transport.datagram import DatagramServer
from ..transport.local import LOCAL_ADDRESSES, SERVED_PORTS
from ..wire import ntp
from ..wire.addresses import format_address
from .oneshot import clock_failed

logger = logging.getLogger(__name__)


class NtpHandler(socketserver.BaseRequestHandler):
    """NTP server mode: a 48-byte mode-4 reply to each valid client packet."""

    protocol = "ntp"

    server: NtpServer

    def handle(self) -> None:
        data, reply_to, received = self.request
        now = self.server.now_ns
        try:
            if now is not time.time_ns:  # an injected clock: both times from it
                received = now()
            reply = ntp.server_reply(
                data, self.server.state(), received, now, self.client_address[1]
            )
        except Exception as exc:
            clock_failed(self, exc)
            return
        if reply is None:
            self.server.drop("not an NTP client request")
            return
        self.server.answered += 1  # before: a client may ask the count at once
        reply_to.sendto(reply, self.client_address)


class UpstreamQuery:
    """Asks the NTP server that synchronises this machine's clock (its
    daemon: chronyd, ntpd) what it claims, without ever waiting for it.

    current() sends a client request at most every `interval` seconds and
    reads the reply on a later call, so the serving loop never waits on the
    daemon. A reply is used only if it passes a client's checks, from a
    stratum below 15, and for `usable` seconds after it was asked. An
    address of this host and a UDP port this process serves is never asked:
    the answer would be this server's own claim. Thread-safe.
    """

    interval = 8.0
    usable = 64.0

    def __init__(self, address: tuple) -> None:
        self.address = address
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
            try:
                reply = ntp.check_reply(data, self._request)
            except ntp.NtpError as exc:
                logger.debug("%s: %s", format_address(self.address), exc)
                continue
            self._request = None
            if reply.stratum < ntp.MAX_STRATUM:
                self._found = (self._asked, ntp.Upstream.from_reply(reply))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._request = None


class NtpServer(DatagramServer):
    """An NTP server (RFC 5905 server mode, the SNTP server of RFC 4330).

    It reads the kernel's clock state once a second and never claims a
    synchronisation the machine does not have, nor a source it does not
    know (see claims.server_state()): while the kernel says synchronised, it
    claims what `upstream` (the daemon that synchronises the clock) says,
    asked through an UpstreamQuery, or else what `upstream_claim` (stratum,
    reference ID) configures.
    A datagram whose verdict is KISS gets a Kiss-o'-Death RATE. It answers
    only client requests, never another server's answer, so no two servers
    can answer each other forever. Settings: local_stratum
    (1-15 serves an unsynchronised clock, as chrony's ``local stratum``),
    upstream (an address, None not to ask), upstream_claim, and
    DatagramServer's.
    """

    settings: tuple[str, ...] = ("local_stratum", "upstream", "upstream_claim")
    state_interval = 1.0  # seconds the clock state is reused
    local_stratum: int | None = None
    upstream: tuple | None = ("127.0.0.1", ntp.DEFAULT_PORT)
    upstream_claim: tuple[int, bytes] | None = None

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler] = NtpHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.query: UpstreamQuery | None = None  # a failed bind closes at once
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        self.now_ns = nanoseconds_source(self.clock)
        self.precision = kernel.precision()
        self._state: tuple[float, ntp.ServerState] | None = None
        if self.upstream is not None:
            self.query = UpstreamQuery(self.upstream)

    def state(self) -> ntp.ServerState:
        """The server's clock state, from the kernel's, at most a second old."""
        now = time.monotonic()
        if self._state is None or now - self._state[0] >= self.state_interval:
            kernel_state = kernel.read()
            upstream, age = self._upstream(kernel_state, now)
            state = claims.server_state(
                kernel_state, self.local_stratum, self.precision, upstream, age
            )
            self._state = (now, state)
        return self._state[1]

    def _upstream(
        self, kernel_state: kernel.KernelState | None, now: float
    ) -> tuple[ntp.Upstream | None, float]:
        """What the server the kernel's clock follows claims, and its age."""
        if kernel_state is None or not kernel_state.synchronised:
            return None, 0.0
        found = None if self.query is None else self.query.current(now)
        if found is not None:
            return found
        if self.upstream_claim is not None:
            stratum, reference_id = self.upstream_claim
            claim = ntp.Upstream(
                kernel_state.leap, stratum, reference_id, 0.0, kernel_state.max_error
            )
            return claim, 0.0
        return None, 0.0

    def server_close(self) -> None:
        super().server_close()
        if self.query is not None:
            self.query.close()

    def over_limit(self, request: Any, client_address: Any) -> bytes | None:
        return ntp.kiss_of_death(request[0], source_port=client_address[1])
