"""The protocols that answer and are done, Daytime (RFC 867) and Time
(RFC 868): the server that answers on TCP connect, and the handlers that
send their few bytes over TCP or to a datagram's sender. Nothing at all when
the clock fails: RFC 868 says never to send a wrong time, and no made-up
time goes out on any protocol."""

from __future__ import annotations

import socket
import socketserver
import weakref

from ..clock.system import Clock, local_clock
from ..transport.admission import AdmissionMixIn
from ..transport.binding import AnyAddressMixIn
from ..transport.loop import LoopMixIn, clock_failed
from ..transport.pool import AcceptBackoffMixIn
from ..transport.settings import SettingsMixIn
from ..wire import daytime, rfc868
from ..wire.line import TimeLines


class AnswerHandler(socketserver.BaseRequestHandler):
    """Sends answer(clock): on a TCP connection, which the server then closes,
    or to a datagram's sender. Nothing at all if the clock fails.

    RFC 867 and 868 answer any datagram, so two such servers (on one host or
    two, in one process or two, on any port) would answer each other's
    answers forever: a datagram that is itself a Daytime or Time answer
    (is_answer()) is never answered, and is counted as a loop refused.
    """

    def answer(self, clock: Clock) -> bytes:
        """The bytes to send for the time `clock` reads now."""
        raise NotImplementedError

    @staticmethod
    def is_answer(datagram: bytes) -> bool:
        """Whether a datagram is a Daytime or Time server's answer."""
        return rfc868.is_reply(datagram) or daytime.is_reply(datagram)

    def handle(self) -> None:
        """Send the answer once, over TCP or to the datagram's sender."""
        if isinstance(self.request, tuple) and self.is_answer(self.request[0]):
            self.server.count_refusal("loop", self.client_address)  # type: ignore[attr-defined]
            return
        try:
            data = self.answer(self.server.clock)  # type: ignore[attr-defined]
        except Exception as exc:
            clock_failed(self.client_address, exc)
            return
        self.server.answered += 1  # type: ignore[attr-defined]
        if isinstance(self.request, tuple):  # a datagram: (data, reply, time)
            self.request[1].sendto(data, self.client_address)
        else:
            self.request.sendall(data)


class DaytimeHandler(AnswerHandler):
    """RFC 867: the time as one line, in the line protocol's form, ending in CRLF."""

    protocol = "daytime"

    # The lines of each clock (one zone each), a second's formatted once.
    _lines: weakref.WeakKeyDictionary[Clock, TimeLines] = weakref.WeakKeyDictionary()

    def answer(self, clock: Clock) -> bytes:
        """The time as one Daytime line (RFC 867)."""
        lines = self._lines.get(clock)
        if lines is None:
            lines = self._lines.setdefault(clock, TimeLines())
        return daytime.daytime_line(lines.line(clock.now_ns(), clock.utc_offset))


class TimeHandler(AnswerHandler):
    """RFC 868: 4 bytes, the seconds since 1900 modulo 2**32."""

    protocol = "time"

    def answer(self, clock: Clock) -> bytes:
        """The time as RFC 868's four bytes: seconds since 1900."""
        return rfc868.encode(clock.now_ns() // 1_000_000_000)


class OneShotServer(
    SettingsMixIn,
    LoopMixIn,
    AdmissionMixIn,
    AcceptBackoffMixIn,
    AnyAddressMixIn,
    socketserver.TCPServer,
):
    """A TCP server for protocols that answer on connect, then close: Daytime, Time.

    The answer is a few bytes into a new socket's empty buffer, which cannot
    block, so the serving thread sends it itself: no thread per connection
    and no connection left open to cap. Settings: clock, and AdmissionMixIn's.
    """

    settings: tuple[str, ...] = ("clock",)
    clock: Clock = local_clock
    allow_reuse_address = True
    request_queue_size = socket.SOMAXCONN

    def server_close(self) -> None:
        """Stop listening, log what the logs hold."""
        self.socket.close()
        self.flush_logs()
