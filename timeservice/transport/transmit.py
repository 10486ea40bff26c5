"""When a server's datagrams leave: the kernel's transmit times of those it
asks for (Linux's SO_TIMESTAMPING), asked for one datagram at a time and
matched back from the socket's error queue to the `token` it was sent with;
and a send run through without sending (warm()), before one that must
leave as soon as it is asked.

A send from idle is readied by sending the same datagram to a socket of the
server's own on loopback (Sink), which runs the code of a whole send warm,
and then running the real one through to its route (MSG_PROBE).

The error queue gives back each datagram stamped, as the network sent it
(headers first): a stamp is matched by the datagram's bytes, as chrony
matches them, so that another process on the same socket (a worker) can
never hand one datagram's stamp to another's token; its stamps are lost to
this one, and one left unmatched is forgotten past `pending_most`. Only the
datagrams asked for are stamped: the others cost nothing more.
"""

from __future__ import annotations

import collections
import logging
import socket
from typing import Any

from ..host import capabilities
from .ancillary import (
    _SCM_TIMESTAMPING_SPACE,
    ERROR_QUEUE_SPACE,
    REPORT_SOFTWARE,
    RX_FILTER,
    SO_TIMESTAMPING,
    STAMP_THIS,
    transmit_stamp_of,
)

logger = logging.getLogger(__name__)

ERROR_QUEUE = socket.MSG_ERRQUEUE | getattr(socket, "MSG_DONTWAIT", 0)
PROBE = 0x10  # Linux's MSG_PROBE, which the socket module does not name
LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


class TransmitTimes:
    """The datagrams sent on one socket whose transmit times are awaited."""

    pending_most = 64  # datagrams stamped and not yet matched
    most_read = 64  # error queue messages read at once

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._pending: collections.OrderedDict[bytes, Any] = collections.OrderedDict()

    def sent(self, data: bytes, token: Any) -> None:
        """`data` went out stamped: remember it until its stamp comes."""
        pending = self._pending
        pending[data] = token
        if len(pending) > self.pending_most:
            pending.popitem(last=False)

    def collect(self) -> list[tuple[Any, int]]:
        """Read the error queue: each stamp of a datagram sent here, as
        (token, transmit_ns)."""
        found = []
        for _ in range(self.most_read):
            try:
                frame, ancillary, _, _ = self.socket.recvmsg(
                    2048, ERROR_QUEUE_SPACE, ERROR_QUEUE
                )
            except OSError:  # empty (EAGAIN), or a socket closed
                break
            stamp = transmit_stamp_of(ancillary)
            if stamp is None:
                continue
            for data in reversed(self._pending):  # the latest is likeliest
                if frame.endswith(data):
                    found.append((self._pending.pop(data), stamp))
                    break
        return found


class Sink:
    """A socket of the server's own on loopback, for sends that only warm
    the path: each datagram is read back once the send it readied is done.
    It connects to the first source that sends it what the server sent, so
    that nothing else arrives after, whatever a local user sends it."""

    most_read = 8  # datagrams read back by one take()

    def __init__(self, family: int) -> None:
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.socket.setblocking(False)
            self.socket.bind((LOOPBACK[family], 0))
            self.port = self.socket.getsockname()[1]
        except OSError:
            self.socket.close()
            raise
        self.connected = False

    def address(self, family: int) -> tuple[str, int]:
        """Where a socket of `family` sends to reach it: its loopback
        address, IPv4-mapped from a dual-stack IPv6 socket."""
        host = LOOPBACK[self.socket.family]
        if family != self.socket.family:
            host = "::ffff:" + host
        return host, self.port

    def take(self, data: bytes) -> None:
        """Read back what has arrived, `data` among it."""
        sock = self.socket
        for _ in range(self.most_read):
            try:
                got, source = sock.recvfrom(2048)
            except OSError:  # nothing more (EAGAIN)
                return
            if not self.connected and got == data:
                sock.connect(source)
                self.connected = True

    def close(self) -> None:
        """Close its socket: the server's own close does (close_sinks())."""
        self.socket.close()


class TransmitMixIn:
    """For a datagram server: the kernel's transmit times, with
    `transmit_times` set (a class variable), where the platform gives them
    and its receive times are on this process's clock (`timed` then says
    so). send_stamped() sends a datagram whose transmit time goes to
    transmitted(token, ns) when it comes; warm() readies a send. Needs the
    server's socket, clock and kernel_timestamps."""

    transmit_times = False
    sinks: dict[bool, Sink | None] | None = None  # by IPv4 path; None: none can be
    _unsettled: tuple[Sink, bytes] | None = None  # sent to a sink, not read back
    transmitted_times: TransmitTimes | None = None  # where the kernel says
    timed: TransmitTimes | None = None  # those, where the clock is the system's
    _received_stamps = 0  # room for a receive stamp nobody asked for
    socket: socket.socket
    clock: Any
    kernel_timestamps: bool

    def _ask_transmit_times(self) -> None:
        """Have the kernel report the transmit times asked for, leaving out
        the receive stamps nobody asked for where it can (else making room
        for them)."""
        if not (self.kernel_timestamps and capabilities.TRANSMIT_TIMESTAMPS):
            return
        for flags, extra in (
            (REPORT_SOFTWARE | RX_FILTER, 0),
            (REPORT_SOFTWARE, _SCM_TIMESTAMPING_SPACE),
        ):
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
            except OSError:
                continue
            self._received_stamps = extra
            self.transmitted_times = TransmitTimes(self.socket)
            break
        self.timing()

    def timing(self) -> None:
        """Whether the kernel's transmit times may be used: only on the
        system clock, which they are on (again after a new clock is set)."""
        self.timed = self.transmitted_times if self.clock.system else None

    def send_stamped(self, reply: Any, data: bytes, address: Any, token: Any) -> None:
        """Send `data`, its transmit time to go to transmitted(token, ns);
        a plain send where the kernel gives no times."""
        times = self.timed
        if times is None:
            reply.sendto(data, address)
            return
        if reply is self.socket:  # no ancillary data of its own
            reply.sendmsg([data], [STAMP_THIS], 0, address)
        else:
            reply.send_stamped(data, address)
        times.sent(data, token)
        self.collect_transmitted()  # on loopback, there already

    def warm(self, reply: Any, data: bytes, address: Any) -> None:
        """Ready the send of `data` to `address`, where Linux can: send it
        to the server's own Sink, then run it through to `address` without
        sending (MSG_PROBE: the kernel looks up the route and stops). A
        server woken from idle finds the send path cold, Python's and the
        kernel's: after this, the send that follows is microseconds quicker
        and steadier. settle() reads the sink back, once that send is done."""
        if not capabilities.PROBE_SEND:
            return
        self._warm_through_sink(data, address)
        if reply is self.socket:  # no ancillary data of its own
            reply.sendto(data, PROBE, address)
        else:
            reply.probe(data, address)

    def _warm_through_sink(self, data: bytes, address: Any) -> None:
        """Send `data` to this process's Sink on the path a datagram to
        `address` takes (IPv4 or IPv6), to be read back by settle()."""
        self.settle()  # what the last warming left, if its send failed
        sinks = self.sinks
        if sinks is None:
            sinks = self.sinks = {}
        family = self.socket.family
        four = family == socket.AF_INET or address[0].startswith("::ffff:")
        if four not in sinks:
            try:
                sinks[four] = Sink(socket.AF_INET if four else socket.AF_INET6)
            except OSError as exc:  # no loopback of that family
                logger.debug("send path warmed without a sink: %s", exc)
                sinks[four] = None
        sink = sinks[four]
        if sink is None:
            return
        try:
            self.socket.sendto(data, sink.address(family))
        except OSError as exc:  # a socket bound where loopback is not reached
            logger.debug("send path warmed without a sink: %s", exc)
            sinks[four] = None
            sink.close()
            return
        self._unsettled = (sink, data)

    def settle(self) -> None:
        """Read back what warm() sent to a sink: called after the send it
        readied, the reading (tens of µs from idle) delays no reply."""
        if self._unsettled is not None:
            sink, data = self._unsettled
            self._unsettled = None
            sink.take(data)

    def close_sinks(self) -> None:
        """Close the sinks this process opened (see warm())."""
        for sink in (self.sinks or {}).values():
            if sink is not None:
                sink.close()
        self.sinks = self._unsettled = None

    def collect_transmitted(self) -> None:
        """Hand the transmit times the kernel has given to transmitted()."""
        if self.transmitted_times is not None:
            for token, transmit_ns in self.transmitted_times.collect():
                self.transmitted(token, transmit_ns)

    def transmitted(self, token: Any, transmit_ns: int) -> None:
        """The kernel's transmit time of a datagram sent with `token`."""
