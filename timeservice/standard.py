"""The standard time services: small handlers over the TCP and UDP servers.

Daytime (RFC 867) and Time (RFC 868) answer on TCP connect and to any UDP
datagram, one handler each for both transports; NTP (RFC 5905, server mode)
answers client packets over UDP. The wire formats are in daytime, rfc868 and
ntp; these classes only move bytes. When the clock fails, nothing is sent:
RFC 868 says never to send a wrong time, and no made-up time goes out on any
protocol.
"""

from __future__ import annotations

import logging
import socketserver
import time
from typing import Any

from . import kernelclock, ntp, rfc868
from .datagram import DatagramServer
from .daytime import daytime_line
from .protocol import Clock, nanoseconds_source, reply_source
from .server import format_address

logger = logging.getLogger(__name__)


def clock_failed(handler: socketserver.BaseRequestHandler, exc: Exception) -> None:
    logger.error(
        "%s: cannot read the clock: %r", format_address(handler.client_address), exc
    )


class AnswerHandler(socketserver.BaseRequestHandler):
    """Sends answer(clock): on a TCP connection, which the server then closes,
    or to a datagram's sender. Nothing at all if the clock fails."""

    @staticmethod
    def answer(clock: Clock) -> bytes:
        raise NotImplementedError

    def handle(self) -> None:
        try:
            data = self.answer(self.server.clock)  # type: ignore[attr-defined]
        except Exception as exc:
            clock_failed(self, exc)
            return
        self.server.answered += 1  # type: ignore[attr-defined]
        if isinstance(self.request, tuple):  # a datagram: (data, socket, time)
            self.request[1].sendto(data, self.client_address)
        else:
            self.request.sendall(data)


class DaytimeHandler(AnswerHandler):
    """RFC 867: the time as one line, in the line protocol's form, ending in CRLF."""

    protocol = "daytime"

    @staticmethod
    def answer(clock: Clock) -> bytes:
        return daytime_line(reply_source(clock)())


class TimeHandler(AnswerHandler):
    """RFC 868: 4 bytes, the seconds since 1900 modulo 2**32."""

    protocol = "time"

    @staticmethod
    def answer(clock: Clock) -> bytes:
        return rfc868.encode(nanoseconds_source(clock)() // 1_000_000_000)


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
            reply = ntp.server_reply(data, self.server.state(), received, now)
        except Exception as exc:
            clock_failed(self, exc)
            return
        if reply is None:
            self.server.drop("not an NTP client request")
            return
        self.server.answered += 1  # before: a client may ask the count at once
        reply_to.sendto(reply, self.client_address)


class NtpServer(DatagramServer):
    """An NTP server (RFC 5905 server mode, the SNTP server of RFC 4330).

    It reads the kernel's clock state once a second and never claims a
    synchronisation the machine does not have (see ntp.server_state()).
    Over a source's rate limit it sends a Kiss-o'-Death RATE as often as the
    limiter allows (once a second per source, 16 a second in all) and drops
    the rest. It answers only client requests, never another server's
    answer, so it needs no loop guard: clients such as ntpd ask from port
    123, which may be a port this process serves. Settings: local_stratum
    (1-15 serves an unsynchronised clock, as chrony's ``local stratum``),
    and DatagramServer's.
    """

    settings: tuple[str, ...] = ("local_stratum",)
    local_stratum: int | None = None
    loop_guard = False

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler] = NtpHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        self.now_ns = nanoseconds_source(self.clock)
        self.precision = kernelclock.precision()
        self._state: tuple[float, ntp.ServerState] | None = None

    def state(self) -> ntp.ServerState:
        """The server's clock state, from the kernel's, at most a second old."""
        now = time.monotonic()
        if self._state is None or now - self._state[0] >= 1.0:
            kernel = kernelclock.read()
            self._state = (
                now,
                ntp.server_state(kernel, self.local_stratum, self.precision),
            )
        return self._state[1]

    def over_limit(self, request: Any, client_address: Any) -> bytes | None:
        return ntp.kiss_of_death(request[0])
