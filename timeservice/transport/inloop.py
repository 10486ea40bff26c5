"""Connections the serving thread answers itself, as an event loop does: a
complete request is answered at once, and a connection that only waits for
its next request or for its end stays in the loop's poll set, not in a
thread. A connection that needs more (a partial or long line, replies the
kernel will not take at once, a deadline, the loop's end) goes to a thread
of the pool with what it had, and its handler goes on from there.

Apache httpd's event MPM keeps idle connections the same way. Handing a
connection from the accepting thread to a worker costs a task switch and
the GIL taken back and forth, more than a one-line request's answer; a
thread per waiting connection costs the same at each of its requests.
"""

from __future__ import annotations

import contextlib
import io
import socket
from typing import Any

from ..policy.logs import BoundedLog, format_address
from .loop import LoopMixIn
from .pool import ThreadPoolMixIn
from .registry import abort

# Reads and writes that return at once; the socket itself stays blocking,
# as a handler that takes the connection over expects it. Where there is no
# such flag, every connection gets a thread.
AT_ONCE = getattr(socket, "MSG_DONTWAIT", 0)


class Held:
    """A connection the serving thread holds. To the registry it is a
    handler (request, requests, expire()); to the handler that may take it
    over, what it had: input not answered (`unread`), replies not yet sent
    (`unsent`), the count of its answers, and why it was cut off (`cause`)."""

    __slots__ = (
        "cause",
        "client_address",
        "fd",
        "request",
        "requests",
        "unread",
        "unsent",
    )

    def __init__(self, request: socket.socket, client_address: Any) -> None:
        self.request, self.client_address = request, client_address
        self.fd = request.fileno()  # the loop's key, while it holds it
        self.requests = 0
        self.cause: str | None = None
        self.unread = self.unsent = b""

    def expire(self, cause: str, grace: float, first: bool = True) -> None:
        """Cut off, from the registry's thread: the first time the loop sees
        the end of input and hands the connection to a thread, whose handler
        says why; the next, it is reset."""
        if first:
            self.cause = cause
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RD)  # readable: the loop wakes
        else:
            abort(self.request)


class InLoopMixIn(LoopMixIn, ThreadPoolMixIn):
    """Answers complete requests in the serving thread, where the server
    says it may (answers_in_loop()) and serve_forever() runs on poll():
    answer_at_once(data) gives the replies to what a connection sent, and
    how many they are, or None when a handler must take it. A handler
    that takes a held connection over asks taken_over(request) for what
    the loop had. Class variable: in_loop (False: every connection gets a
    thread, as socketserver gives it)."""

    settings: tuple[str, ...] = ("in_loop",)
    in_loop = True
    read_most = 4096  # bytes read from a connection per wake-up
    disable_nagle_algorithm = True  # replies are small and must not wait for an ACK
    closed_log: BoundedLog

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._taken: dict[socket.socket, Held] = {}  # handed to a thread
        super().__init__(*args, **kwargs)

    def answers_in_loop(self) -> bool:
        """May be overridden: whether the loop may answer this server's
        connections (not where a handler of the library's user answers)."""
        return False

    def answer_at_once(
        self, data: bytes, client_address: Any
    ) -> tuple[bytes, int] | None:
        """May be overridden: the replies to `data`, all of it, and their
        count; None where a handler must answer it."""
        return None

    def serve_connection(self, request: Any, client_address: Any) -> None:
        """Answer what the connection has sent and hold it in the loop;
        give it a thread where the loop cannot."""
        if not (
            AT_ONCE
            and self.in_loop
            and self._poll is not None
            and self.answers_in_loop()
        ):
            super().serve_connection(request, client_address)
            return
        held = Held(request, client_address)
        try:
            if self.disable_nagle_algorithm:
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
            return
        self.track(held)  # type: ignore[attr-defined]
        if self.ready(held) and not self.hold(held.fd, held):
            self._take_over(held)

    def ready(self, held: Held) -> bool:
        """Answer what a held connection has sent; True while the loop keeps it."""
        sock = held.request
        try:
            data = sock.recv(self.read_most, AT_ONCE)
        except BlockingIOError:
            return True  # nothing yet
        except OSError:
            self.handle_error(sock, held.client_address)
            self._close(held)
            return False
        answered = None
        if data and held.cause is None:
            try:
                answered = self.answer_at_once(data, held.client_address)
            except Exception:
                self.handle_error(sock, held.client_address)
                self._close(held)
                return False
        if answered is None:
            if not data and held.cause is None:  # the client is done
                self._close(held)
            else:
                held.unread = data
                self._take_over(held)
            return False
        replies, count = answered
        try:
            sent = sock.send(replies, AT_ONCE)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.handle_error(sock, held.client_address)
            self._close(held)
            return False
        held.requests += count
        if sent < len(replies):  # the client reads slowly: a thread waits
            held.unsent = replies[sent:]
            self._take_over(held)
            return False
        return True

    def _close(self, held: Held) -> None:
        self.let_go(held.fd)
        self.closed_log.note(  # before the close, as a handler's finish()
            "%s: closed after %d request(s)",
            format_address(held.client_address),
            held.requests,
        )
        self.shutdown_request(held.request)

    def _take_over(self, held: Held) -> None:
        """Give a held connection to a thread, with what it had."""
        self.let_go(held.fd)
        self._taken[held.request] = held
        super().serve_connection(held.request, held.client_address)

    def taken_over(self, request: socket.socket) -> Held | None:
        """What the loop had of a connection a handler takes over, if it held it."""
        return self._taken.pop(request, None)

    def release_held(self) -> None:
        """The loop ends: threads take the connections it held."""
        super().release_held()
        for held in list(self.held.values()):
            self._take_over(held)

    def refuse(self, request: Any, client_address: Any, cause: str) -> None:
        self._taken.pop(request, None)  # no thread could be started for it
        super().refuse(request, client_address, cause)


class Unread(io.RawIOBase):
    """A connection's input for the handler that takes it over: first what
    the loop read and did not answer, then the connection's own."""

    def __init__(self, first: bytes, raw: Any) -> None:
        super().__init__()
        self._first, self._raw = memoryview(first), raw

    def readable(self) -> bool:
        """Always: it is made for reading."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from what the loop read, then from the connection."""
        if not self._first:
            return self._raw.readinto(buffer)
        count = min(len(buffer), len(self._first))
        buffer[:count] = self._first[:count]
        self._first = self._first[count:]
        return count

    def fileno(self) -> int:
        """The connection's descriptor."""
        return self._raw.fileno()

    def close(self) -> None:
        """Close what it reads from (the descriptor stays the socket's)."""
        self._raw.close()
        super().close()
