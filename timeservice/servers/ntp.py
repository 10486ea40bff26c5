"""NTP server mode (RFC 5905, the SNTP server of RFC 4330): the handler,
the server that never claims a synchronisation the machine lacks, and the
query that asks the daemon that synchronised the clock what to claim."""

from __future__ import annotations

import logging
import socketserver
import time
from collections.abc import Callable
from typing import Any

from ..clock import claims, kernel
from ..transport.datagram import DatagramServer
from ..transport.loop import clock_failed
from ..wire import ntp, nts
from .upstream import UpstreamQuery

logger = logging.getLogger(__name__)


class NtpHandler(socketserver.BaseRequestHandler):
    """NTP server mode: a 48-byte mode-4 reply to each valid client packet."""

    protocol = "ntp"

    server: NtpServer

    def handle(self) -> None:
        """Answer a client request with the server's state; drop anything else."""
        data, reply_to, received = self.request
        clock = self.server.clock
        now = clock.now_ns
        port = self.client_address[1]
        try:
            if not clock.system:  # a clock of its own: both times from it
                received = now()
            state = self.server.state()
            if len(data) > ntp.PACKET_BYTES and self.server.nts is not None:
                self.answer_nts(
                    data,
                    reply_to,
                    lambda: ntp.server_reply(data, state, received, now, port),
                )
                return
            reply = ntp.server_reply(data, state, received, now, port)
        except Exception as exc:
            clock_failed(self.client_address, exc)
            return
        if reply is None:
            self.server.drop("not an NTP client request")
            return
        self.server.answered += 1  # before: a client may ask the count at once
        reply_to.sendto(reply, self.client_address)

    def answer_nts(
        self, data: bytes, reply_to: Any, reply: Callable[[], bytes | None]
    ) -> None:
        """A request with extension fields, where the server speaks NTS: an
        NTS request gets its authenticated answer, or a NAK where the policy
        allows one; any other gets the plain answer (RFC 7822: unknown
        fields are ignored)."""
        server = self.server
        assert server.nts is not None
        try:
            request = nts.read_request(data)
        except ValueError:
            server.drop("a malformed NTS request")
            return
        if request is None:
            answer = reply()
            if answer is None:
                server.drop("not an NTP client request")
                return
            server.answered += 1
            reply_to.sendto(answer, self.client_address)
            return
        verdict = server.nts.answer(data, request, reply)
        if verdict.reply is None:
            server.drop(verdict.dropped)
            return
        if verdict.nak:
            limits = server.limits
            if limits is not None and not limits.may_nak(self.client_address):
                server.drop("an NTS NAK over its source's bound")
                return
        else:
            server.answered += 1
        reply_to.sendto(verdict.reply, self.client_address)


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
    upstream (an address, None not to ask; see timeservice.servers.upstream
    for the addresses it may be), upstream_claim, kernel_state (a function
    that reads the kernel's clock state in place of kernel.read(), for
    tests), nts (a servers.nts.NtsResponder, for NTS requests), and
    DatagramServer's.
    """

    settings: tuple[str, ...] = (
        "local_stratum",
        "upstream",
        "upstream_claim",
        "kernel_state",
        "nts",
    )
    state_interval = 1.0  # seconds the clock state is reused
    local_stratum: int | None = None
    upstream: tuple | None = ("127.0.0.1", ntp.DEFAULT_PORT)
    upstream_claim: tuple[int, bytes] | None = None
    kernel_state: Callable[[], kernel.KernelState | None] | None = None  # for tests
    nts: Any = None  # a servers.nts.NtsResponder: NTS requests answered
    max_packet_size = 2048  # an NTS request with its placeholders: a kilobyte or more

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler] = NtpHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.query: UpstreamQuery | None = None  # a failed bind closes at once
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        self.precision = kernel.precision()
        self._state: tuple[float, ntp.ServerState] | None = None
        if self.upstream is not None:
            try:
                self.query = UpstreamQuery(self.upstream)
            except ValueError:  # an address that cannot be vouched for
                self.server_close()
                raise

    def state(self) -> ntp.ServerState:
        """The server's clock state, from the kernel's, at most a second old."""
        now = time.monotonic()
        if self._state is None or now - self._state[0] >= self.state_interval:
            kernel_state = (self.kernel_state or kernel.read)()
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

    def settings_changed(self, names: set[str]) -> None:
        """What to claim may have changed: the next request reads it afresh."""
        super().settings_changed(names)
        self._state = None

    def server_close(self) -> None:
        super().server_close()
        if self.query is not None:
            self.query.close()

    def over_limit(self, request: Any, client_address: Any) -> bytes | None:
        return ntp.kiss_of_death(request[0], source_port=client_address[1])
