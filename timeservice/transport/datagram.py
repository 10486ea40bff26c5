"""Serving over UDP: socketserver's UDPServer with one send path and a limit on
every source.

A spoofed datagram makes a server send to a victim, so what each source may
get is decided by its SourceLimits (timeservice.policy.sources); no datagram
from port 0, nor one sent to a broadcast or multicast address, is answered
at all. Admission only decides: every reply leaves through the datagram's
Reply, which answers from the address the datagram was sent to, so that a
server bound to a wildcard address answers as the address its clients
asked. No read waits: a wake-up with no datagram behind it (one the kernel
dropped for its checksum after select() saw it) costs nothing. Datagrams
are answered in the serving thread: a reply costs less than starting a
thread.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import socket
import socketserver
import time
from typing import Any

from ..clock.system import Clock, local_clock
from ..host import capabilities
from ..host.local import SERVED_PORTS
from ..policy.logs import format_address
from ..policy.sources import (
    ANSWER,
    BURST,
    DROP,
    KISS,
    RATE,
    TABLE_BYTES,
    Action,
    SourceLimits,
)
from .admission import AdmissionMixIn
from .ancillary import (
    _PKTINFO_SPACE,
    _STAMP_SPACE,
    IP_PKTINFO,
    SO_TIMESTAMPNS,
    STAMP_THIS,
    answer_from,
    is_wildcard,
    kernel_stamps_agree,
    stamp_of,
)
from .binding import AnyAddressMixIn
from .loop import LoopMixIn
from .settings import SettingsMixIn
from .transmit import PROBE, TransmitMixIn

logger = logging.getLogger(__name__)


# Reads that return at once when nothing is waiting. Where the flag does not
# exist (Windows), the socket itself does not block (see _serve_port()).
DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0) if capabilities.DONT_WAIT else 0


class Reply:
    """The one way replies leave a datagram server: its socket, with the
    ancillary data that makes them leave from the right address.

    An error in sendto() goes to the server's handle_error(), as any error
    of a handler does; attributes other than sendto() are the socket's.
    """

    __slots__ = ("socket", "ancillary", "stamped")

    def __init__(self, sock: socket.socket, ancillary: list[tuple] | None = None):
        self.socket, self.ancillary = sock, ancillary
        self.stamped = [*(ancillary or ()), STAMP_THIS]  # see send_stamped()

    def sendto(self, data: bytes, address: Any) -> int:
        """Send `data` to `address`, from the address the datagram was sent to."""
        if self.ancillary is None:
            return self.socket.sendto(data, address)
        return self.socket.sendmsg([data], self.ancillary, 0, address)

    def send_stamped(self, data: bytes, address: Any) -> int:
        """sendto(), and the kernel asked for the time it leaves (Linux)."""
        return self.socket.sendmsg([data], self.stamped, 0, address)

    def probe(self, data: bytes, address: Any) -> int:
        """sendto() that sends nothing (see TransmitMixIn.warm())."""
        return self.socket.sendmsg([data], self.ancillary or (), PROBE, address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.socket, name)


class _NotUnicast(Reply):
    """The reply of a datagram sent to a broadcast or multicast address,
    which admission drops: it sends nothing."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]

    def sendto(self, data: bytes, address: Any) -> int:
        raise OSError("not answered: sent to a broadcast or multicast address")

    send_stamped = probe = sendto


NOT_UNICAST = _NotUnicast()


class DatagramServer(
    SettingsMixIn,
    LoopMixIn,
    AdmissionMixIn,
    TransmitMixIn,
    AnyAddressMixIn,
    socketserver.UDPServer,
):
    """A UDP server that limits replies per source and reads no more than a datagram.

    Methods that may be overridden: verify_request(request, client_address),
    as in socketserver, whether the source may ask at all;
    admit(request, client_address), what the datagram gets (an Action:
    ANSWER, DROP or KISS), by default the source port and unicast rules,
    verify_request() and then the source's limits;
    over_limit(request, client_address), what to send a datagram whose
    verdict is KISS (by default nothing). None of them
    sends: the serving loop acts on the verdict.
    Settings: rate, burst (None turns the limit off), kiss, table_bytes,
    limits (a SourceLimits made with its own clock or settings), min_source_port
    (datagrams from lower ports are dropped, as inetd does against loops
    between services; port 0 is always dropped), max_packet_size, and
    AdmissionMixIn's (a denied source gets nothing). Class variables:
    batch, the most datagrams one wake-up answers of those already waiting;
    remembered_addresses, how many of the local addresses asked at keep
    their Reply (reply_for(), whose cache_info() says how many it holds).
    With `transmit_times` (a class variable), the kernel's transmit times
    are asked for where the platform gives them (see TransmitMixIn).
    Handlers call drop(reason) for a datagram they do not answer and add to
    `answered`. Their request is ``(data, reply, receive_ns)``: `reply`
    sends the answer (its sendto(data, address)) from the address the
    datagram was sent to; `receive_ns` is the kernel's receive time where
    the platform gives it (SO_TIMESTAMPNS), else the time it was read.
    """

    settings: tuple[str, ...] = (
        "rate",
        "burst",
        "kiss",
        "table_bytes",
        "limits",
        "min_source_port",
        "clock",
    )
    rate = RATE  # replies per second per source, after the burst
    burst: int | None = BURST  # replies a source may have at once
    kiss = False  # a Kiss-o'-Death to a source over its limit (see SourceLimits)
    table_bytes = TABLE_BYTES  # the most the table of sources may hold
    limits: SourceLimits | None = None  # made from the four above unless given
    min_source_port = 0
    clock: Clock = local_clock
    traceback_on_fault = False  # one line: anyone can send datagrams by the thousand
    max_packet_size = 512
    batch = 16  # datagrams answered per wake-up, at most
    remembered_addresses = 256  # local addresses asked at, with their Reply
    # A UDP port in use is an error, as for TCP: with SO_REUSEADDR a second
    # socket could bind the port and take its datagrams.
    allow_reuse_address = False

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.dropped: collections.Counter[str] = collections.Counter()
        self.kernel_timestamps = False  # set by socket_options() where it can be
        self.destination_info = False  # likewise: IP_PKTINFO, IPV6_RECVPKTINFO
        self._no_destination = ""  # why not, where it was asked for
        self._served_port: int | None = None
        self._ancillary_space = 0  # what recvmsg() reads beside the data
        # The Reply for the ancillary data that says which address was asked.
        self.reply_for = functools.lru_cache(self.remembered_addresses)(self.make_reply)
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        if self.limits is None:
            self.limits = SourceLimits(
                self.rate,
                self.burst or BURST,
                kiss=self.kiss,
                table_bytes=self.table_bytes,
                limiting=self.burst is not None,
            )
        if self._served_port is None:  # not activated yet
            self._plain_reply = self.socket

    @classmethod
    def on_socket(cls, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        server = super().on_socket(sock, *args, **kwargs)
        server._serve_port()
        return server

    def server_activate(self) -> None:
        super().server_activate()
        self._serve_port()

    def _serve_port(self) -> None:
        """Once the socket is bound: how to read from it and reply, and its
        port among those this process serves."""
        # Where no ancillary data is needed, the socket itself sends.
        self._plain_reply = self.socket
        if not DONT_WAIT:  # no read may block, even after select() said ready
            self.socket.setblocking(False)
        self._served_port = self.server_address[1]
        SERVED_PORTS.add(self._served_port)
        self._ancillary_space = (
            (_STAMP_SPACE if self.kernel_timestamps else 0)
            + (_PKTINFO_SPACE if self.destination_info else 0)
            + self._received_stamps
        )
        self.announce()

    def announce(self) -> None:
        """Say what the kernel would not give, once the port is served: a
        server that could not bind says only that."""
        if self._no_destination:
            logger.warning(
                "%s: cannot tell which address datagrams were sent to (%s): "
                "broadcasts are answered as requests and replies leave from "
                "the kernel's choice; bind this host's addresses to answer "
                "unicast only",
                format_address(self.server_address),
                self._no_destination,
            )

    def socket_options(self) -> None:
        super().socket_options()
        if capabilities.RECEIVE_TIMESTAMPS and kernel_stamps_agree():
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_timestamps = True
            except OSError:
                pass
        if self.transmit_times:
            self._ask_transmit_times()
        if not is_wildcard(self.server_address):
            return  # the kernel delivers only what was sent to its address
        why = "this platform does not say"
        if capabilities.DESTINATION_ADDRESS:
            why = self._ask_destination()
            self.destination_info = not why
        self._no_destination = why

    def _ask_destination(self) -> str:
        """Have the kernel say which address each datagram was sent to; why
        it cannot, if not."""
        try:
            if self.socket.family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                # IPv4 clients too: IP_PKTINFO tells a subnet's broadcast
                # from this host's address, which IPV6_PKTINFO cannot.
                with contextlib.suppress(OSError):
                    self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except OSError as exc:
            return exc.strerror or str(exc)
        return ""

    def get_request(self) -> tuple:
        return self._receive(DONT_WAIT)

    def _receive(self, flags: int) -> tuple:
        if not self._ancillary_space:
            data, address = self.socket.recvfrom(self.max_packet_size, flags)
            return (data, self._plain_reply, time.time_ns()), address
        data, ancillary, _, address = self.socket.recvmsg(
            self.max_packet_size, self._ancillary_space, flags
        )
        read = time.time_ns()
        reply = None
        if self.destination_info:
            reply = self.reply_for(
                tuple(item for item in ancillary if item[0] != socket.SOL_SOCKET)
            )
        if self.kernel_timestamps:
            kernel = stamp_of(ancillary)
            # A clock stepped since the start makes the kernel's time a lie too.
            if kernel is not None and 0 <= read - kernel < 1_000_000_000:
                read = kernel
        return (data, reply or self._plain_reply, read), address

    def make_reply(self, ancillary: tuple[tuple[int, int, bytes], ...]) -> Reply | None:
        """The Reply that answers from the address the datagram was sent to,
        which `ancillary` (the destination's, as recvmsg() gave it) names;
        NOT_UNICAST for a broadcast or multicast address; None where the
        kernel did not say. reply_for() remembers it."""
        info, unicast = answer_from(list(ancillary))
        if info is None:
            return None
        return Reply(self.socket, info) if unicast else NOT_UNICAST

    def _handle_request_noblock(self) -> None:
        """One wake-up of serve_forever() or handle_request(): the datagram
        waiting, then those already behind it, up to `batch` in all.

        socketserver's own loop serves one request per wake-up and sends
        nothing for one that verify_request() refuses. Here admit() decides
        what each datagram gets; the handler sends an answer, and this loop
        sends a kiss (over_limit()'s), both through the datagram's reply,
        every error handled as handle_error() handles a request's. Datagrams
        are answered in this thread: a reply costs less than starting a
        thread.
        """
        for _ in range(self.batch):
            try:
                request, client_address = self._receive(DONT_WAIT)
            except OSError:  # none waiting, or a readiness with nothing behind
                self.collect_transmitted()  # which may be a transmit time's
                return
            try:
                verdict = self.admit(request, client_address)
                if verdict is ANSWER:
                    self.finish_request(request, client_address)
                elif verdict is KISS:
                    kiss = self.over_limit(request, client_address)
                    if kiss is not None:
                        request[1].sendto(kiss, client_address)
            except Exception:
                self.handle_error(request, client_address)

    def settings_changed(self, names: set[str]) -> None:
        """A rate limit turned on or off, or new figures for it: the sources
        it knows keep their place."""
        super().settings_changed(names)
        self.timing()  # the clock may be another
        if not names & {"rate", "burst", "kiss", "limits"} or "limits" in names:
            return
        assert self.limits is not None
        self.limits.configure(
            rate=self.rate,
            burst=self.burst,
            kiss=self.kiss,
            limiting=self.burst is not None,
        )

    def admit(self, request: Any, client_address: Any) -> Action:
        """What a datagram gets: nothing from a low source port or sent to
        an address not this host's own (rules no override of verify_request()
        can lift: they keep the server from answering another service or a
        broadcast), nothing unless verify_request() lets its source ask (the
        access list), then what its SourceLimits decide. Decides and counts,
        never sends."""
        port = client_address[1]
        if port < self.min_source_port or port == 0:  # port 0 cannot be answered
            self.count_refusal("low_source_port", client_address)
            return DROP
        if request[1] is NOT_UNICAST:
            self.count_refusal("not_unicast", client_address)
            return DROP
        if not self.verify_request(request, client_address):
            return DROP
        limits = self.limits
        if limits is None or not limits.limiting:
            return ANSWER
        verdict = limits.decide(client_address)
        if verdict is not ANSWER:
            self.count_refusal("rate_limited", client_address)
        return verdict

    def over_limit(self, request: Any, client_address: Any) -> bytes | None:
        """What to send a datagram whose verdict is KISS, or None."""
        return None

    def drop(self, reason: str) -> None:
        """Count a datagram the handler will not answer."""
        with self._count_lock:
            self.dropped[reason] += 1

    def statistics(self) -> dict[str, Any]:
        counts = super().statistics()
        with self._count_lock:
            counts["errors"] = dict(self.dropped)
        if self.limits is not None:  # read without the serving thread's help
            counts["sources"] = len(self.limits)
            counts["leaked"] = self.limits.leaked
        return counts

    def server_close(self) -> None:
        """Stop listening, give up the port, log what the logs hold."""
        self.socket.close()
        self.close_sinks()
        if self._served_port is not None:
            SERVED_PORTS.remove(self._served_port)
            self._served_port = None
        self.flush_logs()
