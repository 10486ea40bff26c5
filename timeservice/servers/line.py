"""The line protocol's server: TimeServer, a threading TCP server composed
from the transports' parts, and TimeRequestHandler, which answers the lines
of one connection as Twisted's LineOnlyReceiver has them."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import socket
import socketserver
from typing import Any, BinaryIO

from ..clock.system import Clock, local_clock
from ..host import capabilities
from ..policy.logs import format_address
from ..transport.inloop import Unread
from ..transport.loop import clock_failed
from ..transport.registry import abort, drain
from ..transport.stream import StreamServer
from ..wire.line import (
    BUSY,
    CLOCK_UNAVAILABLE,
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    NOT_ALLOWED,
    REQUEST,
    SHUTTING_DOWN,
    TIMEOUT,
    TimeLines,
    error_line,
    request_error,
    strip_line_ending,
)

logger = logging.getLogger(__name__)


USUAL_REQUEST = REQUEST[: -len(b"\n")]


# What a client is told when the registry cuts its connection off, by cause.
LAST_WORDS = {"timeout": TIMEOUT, "shutdown": SHUTTING_DOWN, "displaced": BUSY}


class TimeRequestHandler(socketserver.StreamRequestHandler):
    """Answers the request lines of one connection until EOF, an error or a deadline.

    Methods that may be overridden, as Twisted's LineOnlyReceiver has them:
    line_received(request) answers one line; line_too_long(line) ends the
    connection; time_reply() makes the reply to ``send time``.
    Class variables that may be overridden: fd_reader, read_buffer.

    The handler sets no socket timeout (that would add a poll to every read)
    and reads no clock: it counts the requests it answers, and the server's
    ConnectionRegistry keeps the deadline from that count.
    """

    server: TimeServer
    protocol = "line"  # for the metrics
    disable_nagle_algorithm = True  # replies are small and must not wait for an ACK
    fd_reader = capabilities.SOCKETS_ARE_FILES  # C reader; else makefile()'s
    read_buffer = 4096

    def setup(self) -> None:
        """Make the reader, note the peer and the clock, be tracked."""
        # StreamRequestHandler.setup() makes a reader with makefile(), whose
        # reads run Python code; a buffered reader over the file descriptor
        # reads in C. The writer is made only if a subclass asks for wfile:
        # the handler itself sends with sendall().
        self.connection = sock = self.request
        # Blocking, whatever socket.setdefaulttimeout() the program has set:
        # a socket with a timeout is non-blocking underneath, and a reader
        # over its descriptor would take "no byte yet" for EOF.
        sock.settimeout(None)
        # What the serving loop had, where it answered the connection first
        # (and set its options).
        held = self.server.taken_over(sock)
        if self.disable_nagle_algorithm and held is None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        unread = b"" if held is None else held.unread
        if self.fd_reader or unread:
            raw: Any = io.FileIO(sock.fileno(), "rb", closefd=False)
            if unread:
                raw = Unread(unread, raw)
            self.rfile = io.BufferedReader(raw, self.read_buffer)
        else:
            self.rfile = sock.makefile("rb", self.read_buffer)
        self.peer = format_address(self.client_address)
        self.debug = logger.isEnabledFor(logging.DEBUG)
        clock = self.server.clock
        self._now, self._offset = clock.now_ns, clock.utc_offset
        self._lines = self.server.time_lines
        # Answered: the registry moves the deadline by it.
        self.requests = 0 if held is None else held.requests
        self.stop_reason: str | None = None  # why it was cut off, if it was
        self.server.track(self)
        # Once tracked, a cut reaches this handler; one before, the loop's.
        self._unsent = b""
        if held is not None:
            self._unsent = held.unsent
            if held.cause is not None:
                self.stop_reason = LAST_WORDS[held.cause]

    def handle(self) -> None:
        """Answer each line until EOF, a line too long, or the server cuts it off."""
        if self._unsent:  # replies the serving loop could not send at once
            self.connection.sendall(self._unsent)
        max_line = self.server.max_line
        readline, limit = self.rfile.readline, max_line + len(b"\r\n")
        line_received = self.line_received
        while True:
            line = readline(limit)
            if line == REQUEST:  # the usual request needs no closer look
                line_received(USUAL_REQUEST)
                continue
            request = strip_line_ending(line)
            if len(request) > max_line:
                self.line_too_long(line)
                return
            if not line.endswith(b"\n"):  # EOF, or the server cut the read short
                if self.stop_reason:
                    self.close_with(self.stop_reason)
                    return
                if not request:
                    return
                # A last request without its LF is still answered; EOF follows.
            line_received(request)

    @functools.cached_property
    def wfile(self) -> BinaryIO:  # type: ignore[override]
        """The connection as a file to write to, for subclasses; flushed and
        closed at the end."""
        return self.connection.makefile("wb")

    def finish(self) -> None:
        """Close the files and log the connection's end, summarised."""
        wfile = self.__dict__.get("wfile")  # None unless a subclass made one
        if wfile is not None:
            with contextlib.suppress(OSError):  # the client may be gone
                wfile.close()  # flushes first
        self.rfile.close()
        why = f" ({self.stop_reason})" if self.stop_reason else ""
        self.server.closed_log.note(
            "%s: closed after %d request(s)%s", self.peer, self.requests, why
        )

    def line_received(self, request: bytes) -> None:
        """Answer one request line (its line ending dropped) with one reply line."""
        reason = request_error(request)
        if reason is None:
            reply = self.time_reply()
        else:
            self.server.count_error(reason)
            reply = error_line(reason)
        if self.debug:
            logger.debug("%s: %r -> %r", self.peer, request, reply)
        self.connection.sendall(reply)
        self.requests += 1  # counted, so the server can see progress

    def line_too_long(self, line: bytes) -> None:
        """A line went past the limit: there is no telling where the next starts."""
        self.close_with(LINE_TOO_LONG)

    def time_reply(self) -> bytes:
        """The clock's time as a reply line, or ERR if the clock fails.

        Never a made-up time; the failure is logged in one line.
        """
        try:
            return self._lines.line(self._now(), self._offset)
        except Exception as exc:
            return self.server.clock_failed(self.client_address, exc)

    def close_with(self, reason: str) -> None:
        """Send a last ERR line and make sure it arrives before the connection
        closes.

        Closing a socket with unread input makes Linux send a reset that can
        overtake the line, so the input is drained first, for a bounded time.
        """
        logger.debug("%s: closing with ERR %s", self.peer, reason)
        self.server.count_error(reason)
        self.connection.sendall(error_line(reason))
        self.connection.shutdown(socket.SHUT_WR)
        drain(self.connection, self.server.linger)

    def expire(self, cause: str, grace: float, first: bool = True) -> None:
        """Cut the connection short; called from another thread (the
        registry's), `cause` timeout, shutdown or displaced (its place in a
        full /64 given to another host).

        The first time, complete lines already received are still answered,
        then the handler says why and closes; the registry calls again once
        `grace` is over (the client does not read), and the connection is
        reset.
        """
        if first:
            self.stop_reason = LAST_WORDS[cause]
            try:
                self.connection.shutdown(socket.SHUT_RD)  # wakes the blocked read
            except OSError:
                pass
        else:
            abort(self.connection)


class TimeServer(StreamServer):
    """A threading TCP server for the time protocol, with limits on every client.

    A connection may send a line of at most `max_line` bytes and must finish
    each line within `idle_timeout` seconds; at most `max_connections` are
    served at once, and one more gets ``ERR busy`` (``ERR not allowed`` if
    the access list refuses it). Settings of its own: max_line, clock (a
    Clock), send_buffer, lines_at_once.
    """

    settings: tuple[str, ...] = ("max_line", "clock", "send_buffer", "lines_at_once")
    max_line = MAX_LINE_BYTES  # longest request line, line ending not counted
    clock: Clock = local_clock
    send_buffer = 64 * 1024  # replies the kernel holds for a client that reads slowly
    lines_at_once = 16  # the most lines of one read the serving loop answers

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[TimeRequestHandler] = TimeRequestHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self.time_lines = TimeLines()  # the reply lines, a second's formatted once
        super().__init__(server_address, handler_class, bind_and_activate, **settings)

    def answers_in_loop(self) -> bool:
        """The serving loop answers for the library's own handler only: a
        subclass of it may answer otherwise, and gets a thread."""
        return self.RequestHandlerClass is TimeRequestHandler

    def answer_at_once(
        self, data: bytes, client_address: Any
    ) -> tuple[bytes, int] | None:
        """The replies to complete request lines, as TimeRequestHandler
        answers them; None for anything else (a partial or long line, more
        than `lines_at_once` lines), which a handler then reads: a thread
        shares the GIL with the others, the loop would make them wait."""
        if data == REQUEST:  # the usual request, alone: nothing to split or check
            reply = self.time_line(client_address)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s: %r -> %r", format_address(client_address), USUAL_REQUEST, reply
                )
            return reply, 1
        if not data.endswith(b"\n") or data.count(b"\n") > self.lines_at_once:
            return None
        lines = [line.removesuffix(b"\r") for line in data.split(b"\n")[:-1]]
        if max(map(len, lines)) > self.max_line:
            return None
        replies = []
        debug = logger.isEnabledFor(logging.DEBUG)
        for request in lines:
            reason = request_error(request)
            if reason is None:
                reply = self.time_line(client_address)
            else:
                self.count_error(reason)
                reply = error_line(reason)
            if debug:
                logger.debug(
                    "%s: %r -> %r", format_address(client_address), request, reply
                )
            replies.append(reply)
        return b"".join(replies), len(lines)

    def time_line(self, client_address: Any) -> bytes:
        """The clock's time as a reply line, or ERR if the clock fails."""
        clock = self.clock
        try:
            return self.time_lines.line(clock.now_ns(), clock.utc_offset)
        except Exception as exc:
            return self.clock_failed(client_address, exc)

    def clock_failed(self, client_address: Any, exc: Exception) -> bytes:
        """A clock that failed: logged and counted; the ERR line to send."""
        clock_failed(client_address, exc)
        self.count_error(CLOCK_UNAVAILABLE)
        return error_line(CLOCK_UNAVAILABLE)

    def refusal_words(self, cause: str) -> bytes:
        """The line protocol says why: ``ERR not allowed`` or ``ERR busy``."""
        return error_line(NOT_ALLOWED if cause == "denied" else BUSY)

    def socket_options(self) -> None:
        # Accepted connections inherit the listening socket's buffer size.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        if capabilities.SOCKETS_ARE_FILES:
            # Connections already waiting are accepted in the same wake-up,
            # until accept() fails (ThreadPoolMixIn). Only the descriptor
            # stops blocking: the socket object keeps no timeout, so that
            # handle_request() still waits; handlers make theirs blocking.
            os.set_blocking(self.socket.fileno(), False)
        super().socket_options()
