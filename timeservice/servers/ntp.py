"""NTP server mode (RFC 5905, the SNTP server of RFC 4330): the handler,
the server that never claims a synchronisation the machine lacks, and the
query that asks the daemon that synchronised the clock what to claim."""

from __future__ import annotations

import logging
import math
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

# A server that sent no basic reply for IDLE_NS before a request arrived
# finds its send path cold, and answers it with send_exact(): LEAD_NS is how
# far ahead its timestamp is written, SPINS_MOST the clock reads it waits.
IDLE_NS = 1_000_000
LEAD_NS = 4_000
SPINS_MOST = 1_000

_basic_said = False  # that every reply is basic, logged once a process

ODD = frozenset(bytes([n]) for n in range(1, 256, 2))  # bytes whose lowest bit is set


class NtpHandler(socketserver.BaseRequestHandler):
    """NTP server mode: a 48-byte mode-4 reply to each valid client packet.
    The server answers (NtpServer.answer()); a subclass that overrides
    handle(), setup() or finish() gets an instance for each datagram, as
    socketserver gives one, while the stock handler costs none."""

    protocol = "ntp"

    server: NtpServer

    def handle(self) -> None:
        """Have the server answer the datagram."""
        self.server.answer(self.request, self.client_address)


class NtpServer(DatagramServer):
    """An NTP server (RFC 5905 server mode, the SNTP server of RFC 4330).

    It reads the kernel's clock state once a second and never claims a
    synchronisation the machine does not have, nor a source it does not
    know (see claims.server_state()): while the kernel says synchronised, it
    claims what `upstream` (the daemon that synchronises the clock) says,
    asked through an UpstreamQuery, or else what `upstream_claim` (stratum,
    reference ID) configures.
    Where the kernel gives the transmit times of datagrams (Linux), a
    client that asks for interleaved mode (RFC 9769, chronyd's ``xleave``)
    gets it: the reply to its next request carries the kernel's transmit
    time of this one, which its source's entry in the rate limit's table
    keeps; every other reply is basic, its transmit timestamp the time it
    leaves, as closely as Python can tell (see send_exact()).
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
    interleaving = False  # see _interleaving()
    transmit_times = True  # the kernel's, for interleaved mode and basic mode's cost

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
        self._interleaving()  # now that the table is made
        self._state: ntp.ServerState  # read afresh once _state_until is past
        self._state_until = -math.inf
        self._sent_ns = 0  # when the last basic reply left, by the server's clock
        if self.upstream is not None:
            try:
                self.query = UpstreamQuery(self.upstream)
            except ValueError:  # an address that cannot be vouched for
                self.server_close()
                raise

    def socket_options(self) -> None:
        super().socket_options()
        self._interleaving()

    def announce(self) -> None:
        super().announce()
        global _basic_said
        if self.transmitted_times is None and not _basic_said:
            _basic_said = True
            logger.info(
                "NTP: the kernel gives no transmit times here; interleaved mode "
                "is off, and every reply is basic"
            )

    def _interleaving(self) -> None:
        """Whether interleaved requests get interleaved answers: the kernel's
        transmit times, on the clock the server reads, and a table to keep
        them in (an attribute, read for every request)."""
        self.interleaving = self.timed is not None and self.limits is not None

    def transmitted(self, token: Any, transmit_ns: int) -> None:
        """A reply's transmit time, kept for the interleaved answer to its
        client's next request if it is within a second of its request's
        arrival (chrony's bound), as a transmit time must be."""
        address, receive, received = token
        if 0 <= transmit_ns - received <= ntp.NANOSECONDS:
            assert self.limits is not None
            self.limits.transmitted(address, receive, transmit_ns)

    def state(self) -> ntp.ServerState:
        """The server's clock state, from the kernel's, at most a second old."""
        now = time.monotonic()
        if now >= self._state_until:
            kernel_state = (self.kernel_state or kernel.read)()
            upstream, age = self._upstream(kernel_state, now)
            self._state = claims.server_state(
                kernel_state, self.local_stratum, self.precision, upstream, age
            )
            self._state_until = now + self.state_interval
        return self._state

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

    def statistics(self) -> dict[str, Any]:
        """DatagramServer's counts, and where NTS is served its requests:
        authenticated, or answered with a NAK."""
        counts = super().statistics()
        if self.nts is not None:
            counts["nts"] = {"authenticated": self.nts.answered, "nak": self.nts.naks}
        return counts

    def settings_changed(self, names: set[str]) -> None:
        """What to claim may have changed: the next request reads it afresh."""
        super().settings_changed(names)
        self._state_until = -math.inf
        self._interleaving()

    def server_close(self) -> None:
        super().server_close()
        if self.query is not None:
            self.query.close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Answer, without a handler's instance where the handler is the
        stock one (a datagram a few microseconds' work, an object a good
        share of it); through the handler otherwise, as socketserver does."""
        if self.RequestHandlerClass is NtpHandler:
            self.answer(request, client_address)
        else:
            super().finish_request(request, client_address)

    def answer(self, request: tuple, address: Any) -> None:
        """Answer a client request with the server's state, in interleaved
        mode where it asks for it and the server can; drop anything else."""
        data, reply_to, received = request
        clock = self.clock
        try:
            if not clock.system:  # a clock of its own: both times from it
                received = clock.now_ns()
            if time.monotonic() < self._state_until:  # state(), without a call
                state = self._state
            else:
                state = self.state()
            if len(data) > ntp.PACKET_BYTES and self.nts is not None:
                now = clock.now_ns
                self.answer_nts(
                    data,
                    reply_to,
                    address,
                    lambda: ntp.server_reply(data, state, received, now, address[1]),
                )
                return
            # Interleaved mode (RFC 9769) for a request whose origin has the
            # lowest bit set, at least, which no basic client's has.
            interleaved = (
                self.interleaving and data[31:32] in ODD and ntp.looks_interleaved(data)
            )
            if not interleaved:
                head = ntp.reply_head(data, state, received, address[1])
        except Exception as exc:
            clock_failed(address, exc)
            return
        if interleaved:
            self.answer_interleaved(data, reply_to, address, state, received)
            return
        if head is None:
            self.drop("not an NTP client request")
            return
        self.answered += 1  # before: a client may ask the count at once
        if received - self._sent_ns < IDLE_NS:  # busy: the clock read last
            self._sent_ns = sent = clock.now_ns()
            reply_to.sendto(head + ntp.transmit_field(sent), address)
        else:
            self.send_exact(reply_to, head, address)

    def answer_interleaved(
        self,
        data: bytes,
        reply_to: Any,
        address: Any,
        state: ntp.ServerState,
        received: int,
    ) -> None:
        """A request that asks for interleaved mode: the kernel's transmit
        time of the reply it names as origin, if its source's entry in the
        table keeps it (else a basic answer); and this reply's, kept for
        its next request."""
        kept = self.limits
        assert kept is not None  # as self.interleaving says
        try:
            earlier = kept.transmit_for(address, ntp.origin_of(data))
            head = ntp.reply_head(
                data, state, received, address[1], earlier is not None
            )
        except Exception as exc:
            clock_failed(address, exc)
            return
        if head is None:  # it looked like a request, and is not one
            self.drop("not an NTP client request")
            return
        self.answered += 1
        receive = ntp.receive_field(received)
        kept.remember(address, receive)
        token = (address, receive, received)
        if earlier is None:  # basic
            self.send_exact(reply_to, head, address, token)
        else:
            self.send_stamped(
                reply_to, head + ntp.transmit_field(earlier), address, token
            )

    def send_exact(
        self, reply_to: Any, head: bytes, address: Any, token: Any = None
    ) -> None:
        """Send a basic reply, `head` and its transmit timestamp, as close to
        the moment it leaves as Python can (send_stamped() with a `token`).

        A timestamp read just before the send is late by all that follows:
        Python's writing of it, and a send path that a server woken from
        idle finds cold, microseconds that a client sees half of as a bias.
        So the whole reply is written once and its send readied (warm(): sent
        to a socket of the server's own, and run through to the client without
        sending); then the timestamp is written for a moment LEAD_NS
        ahead, and the datagram sent once the clock has passed it, never
        before. A clock that has not passed it within SPINS_MOST reads
        (coarse, set back, fixed) is read again and the reply sent as busy.
        A busy server (answer()) does without: its path is warm, and the
        wait would cost every reply. The basic answer to a request that
        looks interleaved (rare) always takes this way.
        """
        now = self.clock.now_ns
        self.warm(reply_to, head + ntp.transmit_field(now()), address)
        moment = now() + LEAD_NS
        data = head + ntp.transmit_field(moment)
        for _ in range(SPINS_MOST):
            if now() > moment:  # the field rounds up by less than 1 ns
                break
        else:
            moment = now()
            data = head + ntp.transmit_field(moment)
        self._sent_ns = moment
        if token is None:
            reply_to.sendto(data, address)
        else:
            self.send_stamped(reply_to, data, address, token)
        self.settle()  # a failed send leaves it to the next warm()

    def answer_nts(
        self,
        data: bytes,
        reply_to: Any,
        address: Any,
        reply: Callable[[], bytes | None],
    ) -> None:
        """A request with extension fields, where the server speaks NTS: an
        NTS request gets its authenticated answer, or a NAK where the policy
        allows one; any other gets the plain answer (RFC 7822: unknown
        fields are ignored)."""
        assert self.nts is not None
        try:
            request = nts.read_request(data)
        except ValueError:
            self.drop("a malformed NTS request")
            return
        if request is None:
            answer = reply()
            if answer is None:
                self.drop("not an NTP client request")
                return
            self.answered += 1
            reply_to.sendto(answer, address)
            return
        verdict = self.nts.answer(data, request, reply)
        if verdict.reply is None:
            self.drop(verdict.dropped)
            return
        if verdict.nak:
            limits = self.limits
            if limits is not None and not limits.may_nak(address):
                self.drop("an NTS NAK over its source's bound")
                return
        else:
            self.answered += 1
        reply_to.sendto(verdict.reply, address)

    def over_limit(self, request: Any, client_address: Any) -> bytes | None:
        return ntp.kiss_of_death(request[0], source_port=client_address[1])
