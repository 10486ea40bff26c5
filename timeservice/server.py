"""The time server as a library: socketserver parts, one concern each, and a
handler that speaks the line protocol.

``TimeServer`` is assembled from the parts the way socketserver assembles
``ThreadingTCPServer``; each part lists the methods and class variables that
may be overridden. Every class variable named in a part's ``settings`` can
also be given to the constructor as a keyword, for one server only.
The command line (``python -m timeservice.server``) is timeservice.service.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import io
import logging
import os
import queue
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from . import capabilities
from .access import (
    NETWORK_FACTOR,
    AccessList,
    BoundedLog,
    RefusalLog,
    address_key,
    network_key,
)
from .protocol import (
    MAX_LINE_BYTES,
    REQUEST,
    Clock,
    error_line,
    local_now,
    reply_source,
    request_error,
    strip_line_ending,
)

logger = logging.getLogger(__name__)

IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 512
MAX_PER_HOST = 64  # an eighth of the default cap: one host alone cannot fill it
MIN_CONNECTIONS = 128
RESERVED_FILES = 32  # for the listening socket, standard streams, logging
CONNECTION_THREAD = "timeservice connection"  # the name of the threads that serve
WATCHDOG_THREAD = "timeservice watchdog"  # the thread that keeps the deadlines

USUAL_REQUEST = REQUEST[: -len(b"\n")]
LINE_TOO_LONG = error_line("line too long")
CLOCK_UNAVAILABLE = error_line("clock unavailable")
OUT_OF_FILES = {  # what accept() fails with for want of descriptors or memory
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "WSAEMFILE", "WSAENOBUFS")
    if hasattr(errno, name)
}


def format_address(address: tuple) -> str:
    """``HOST port PORT``, as http.server shows an address."""
    return f"{address[0]} port {address[1]}"


def connection_cap(requested: int) -> int:
    """Lower the cap to what the open-file limit leaves room for, but not below 128."""
    soft = capabilities.open_file_limit()
    if soft is None:
        return requested
    return min(requested, max(MIN_CONNECTIONS, soft - RESERVED_FILES))


def socket_budget(connections: int) -> int:
    """How many sockets a server may hold at once, those it serves and those it
    drains after a refusal: what the open-file limit leaves (twice the cap
    where there is none)."""
    soft = capabilities.open_file_limit()
    return 2 * connections if soft is None else soft - RESERVED_FILES


def abort(sock: socket.socket) -> None:
    """Wake a thread blocked on `sock`, and make its close a reset.

    A reset frees the replies queued for a client that does not read them,
    where a normal close would keep them in the kernel for minutes.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # a plain close then; the shutdown below still wakes the thread
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def drain(sock: socket.socket, seconds: float, chunk: int = 4096) -> None:
    """Read and discard input until EOF or for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(chunk):
                return
        except OSError:
            return


def drained(sock: socket.socket, most: int = 16, chunk: int = 4096) -> bool:
    """Discard what a non-blocking socket has received; True once at EOF or failed."""
    for _ in range(most):
        try:
            if not sock.recv(chunk):
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True
    return False


def accepts_at_once(sock: socket.socket) -> bool:
    """Whether accept() on `sock` fails at once when no connection is waiting.

    Not with a timeout (socket.setdefaulttimeout() gives every socket one):
    accept() would wait that long for the next connection.
    """
    timeout = sock.gettimeout()
    if timeout is not None:
        return timeout == 0
    return capabilities.SOCKETS_ARE_FILES and not os.get_blocking(sock.fileno())


def serve_waiting(
    server: socketserver.BaseServer,
    receive: Callable[[], tuple],
    serve: Callable[[Any, Any], None],
    most: int,
) -> None:
    """Serve the requests already waiting, up to `most`, after the one that
    woke serve_forever(): one wake-up then serves them all. Each is verified
    and its errors handled as serve_forever() does; `receive` takes the next
    and raises OSError (BlockingIOError) when none is waiting."""
    for _ in range(most):
        try:
            request, client_address = receive()
        except OSError:
            return
        if not server.verify_request(request, client_address):
            server.shutdown_request(request)
            continue
        try:
            serve(request, client_address)
        except Exception:
            server.handle_error(request, client_address)
            server.shutdown_request(request)


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
        # StreamRequestHandler.setup() makes a reader with makefile(), whose
        # reads run Python code; a buffered reader over the file descriptor
        # reads in C. The writer is made only if a subclass asks for wfile:
        # the handler itself sends with sendall().
        self.connection = sock = self.request
        # Blocking, whatever socket.setdefaulttimeout() the program has set:
        # a socket with a timeout is non-blocking underneath, and a reader
        # over its descriptor would take "no byte yet" for EOF.
        sock.settimeout(None)
        if self.disable_nagle_algorithm:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if self.fd_reader:
            raw = io.FileIO(sock.fileno(), "rb", closefd=False)
            self.rfile = io.BufferedReader(raw, self.read_buffer)
        else:
            self.rfile = sock.makefile("rb", self.read_buffer)
        self.peer = format_address(self.client_address)
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.reply = reply_source(self.server.clock)
        self.requests = self.requests_seen = 0
        self.stop_reason: str | None = None
        self.deadline = 0.0  # set by the server's track()
        self.server.track(self)

    def handle(self) -> None:
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
                    self.close_with(error_line(self.stop_reason))
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
        reply = request_error(request)
        if reply is None:
            reply = self.time_reply()
        else:
            self.server.count_error(reply)
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
            return self.reply()
        except Exception as exc:
            logger.error("%s: cannot read the clock: %r", self.peer, exc)
            self.server.count_error(CLOCK_UNAVAILABLE)
            return CLOCK_UNAVAILABLE

    def close_with(self, line: bytes) -> None:
        """Send a last line and make sure it arrives before the connection closes.

        Closing a socket with unread input makes Linux send a reset that can
        overtake the line, so the input is drained first, for a bounded time.
        """
        logger.debug("%s: closing with %r", self.peer, line)
        self.server.count_error(line)
        self.connection.sendall(line)
        self.connection.shutdown(socket.SHUT_WR)
        drain(self.connection, self.server.linger)

    def expire(self, reason: str, grace: float) -> None:
        """Cut the connection short; called from another thread (the server's).

        Complete lines already received are still answered, then the handler
        says why and closes. Still here `grace` seconds later (the client does
        not read), the connection is reset.
        """
        if self.stop_reason is None:
            self.stop_reason = reason
            self.deadline = time.monotonic() + grace
            try:
                self.connection.shutdown(socket.SHUT_RD)  # wakes the blocked read
            except OSError:
                pass
        else:
            abort(self.connection)


def apply_settings(server: object, settings: dict[str, Any]) -> None:
    """Set, on this server only, the class variables its parts name as settings."""
    known = {
        name
        for klass in type(server).__mro__
        for name in vars(klass).get("settings", ())
    }
    unknown = sorted(settings.keys() - known)
    if unknown:
        raise TypeError(
            f"unknown setting(s) {', '.join(unknown)}; known: {sorted(known)}"
        )
    vars(server).update(settings)


class SettingsMixIn(socketserver.BaseServer):
    """Takes as constructor keywords the class variables its server's parts
    name in `settings`, for this server only; comes first in the bases."""

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        apply_settings(self, settings)
        super().__init__(server_address, handler_class, bind_and_activate)  # type: ignore[call-arg]


class AdmissionMixIn(socketserver.BaseServer):
    """Who may ask: the access list, checked before anything is spent on a
    client, and a count and a summarised log of the clients refused.

    Methods that may be overridden: denied(request, client_address) for a
    client the access list refuses (by default nothing is sent, and a TCP
    connection is closed at once). Subclasses and handlers call
    count_refusal(cause, client_address) and add to `answered`; statistics()
    gives the counts. `turns` counts the turns of serve_forever()'s loop, so
    that a watcher (Service.watch()) can tell a loop that turns from one
    that hangs. Settings: access (an AccessList, None for everyone),
    log_interval (seconds over which refusals are summarised).
    """

    settings: tuple[str, ...] = ("access", "log_interval")
    access: AccessList | None = None
    log_interval = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.answered = 0  # requests answered, as far as the handlers have said
        self.refused: collections.Counter[str] = collections.Counter()
        self.refusals = RefusalLog(self.log_interval)
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.access is None or self.access.allows(client_address[0]):
            return super().verify_request(request, client_address)
        self.count_refusal("denied", client_address)
        self.denied(request, client_address)
        return False

    def denied(self, request: Any, client_address: Any) -> None:
        """A client the access list refuses; the server then drops or closes it."""

    def count_refusal(self, cause: str, client_address: Any) -> None:
        """Count a refused client, and log it (in a summary if there are many)."""
        with self._count_lock:
            self.refused[cause] += 1
        self.refusals.note(cause, format_address(client_address))

    def statistics(self) -> dict[str, Any]:
        """Counts for the metrics: requests answered, clients refused by cause."""
        with self._count_lock:
            return {"requests": self.answered, "refused": dict(self.refused)}

    turns = 0

    def service_actions(self) -> None:
        self.turns += 1
        super().service_actions()
        self.refusals.flush()

    def server_close(self) -> None:
        super().server_close()
        self.refusals.flush(force=True)


class ConnectionRegistry(AdmissionMixIn, socketserver.TCPServer):
    """Knows every open connection: the caps, the idle deadlines, a clean close.

    At most `max_connections` are open at once, at most `max_per_host` from
    one address and `max_per_network` from one IPv6 /64 (None for no such
    limit).
    Methods that may be overridden: refuse(request, client_address, reason)
    answers a connection that cannot be served; sweep(now) keeps the
    deadlines. It extends verify_request(), shutdown_request() and
    server_close(), and handlers call track(handler) once they run and
    count_error(line) for each ERR line they send.

    The deadlines are kept by a watchdog thread that runs while any
    connection is open, so they hold however the program serves:
    serve_forever(), handle_request(), or between shutdown() and
    server_close(). The handlers only count their answers and read no clock.
    """

    settings: tuple[str, ...] = (
        "max_connections",
        "max_per_host",
        "max_per_network",
        "idle_timeout",
        "linger",
        "shutdown_grace",
        "sweep_interval",
    )
    max_connections = MAX_CONNECTIONS  # one more gets ERR busy
    max_per_host: int | None = MAX_PER_HOST  # one more from the address: ERR busy
    max_per_network: int | None = NETWORK_FACTOR * MAX_PER_HOST  # from the /64
    idle_timeout = IDLE_TIMEOUT  # seconds a client has for each request line
    linger = 0.5  # seconds a closing connection is drained, then reset
    shutdown_grace = 1.0  # seconds handlers have to finish after server_close()
    sweep_interval = 0.1  # how often the watchdog looks at the deadlines

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        requested = self.max_connections
        self.max_connections = connection_cap(requested)
        self.max_sockets = socket_budget(self.max_connections)
        if self.max_connections < requested:
            logger.warning(
                "open-file limit allows %d connections, not %d",
                self.max_connections,
                requested,
            )
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Any] = {}  # the handler, once it runs
        self._keys_of: dict[socket.socket, list[str]] = {}  # addresses, networks
        self._per_key: dict[str, int] = {}  # connections open by each
        self.errors: collections.Counter[str] = collections.Counter()
        self._draining: dict[socket.socket, float] = {}  # refused, until EOF or then
        self.closed_log = BoundedLog("connection(s) closed")
        self._watchdog: threading.Thread | None = None
        self._wake = threading.Event()
        self._closing = False
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection while under the caps; refuse it with ``ERR busy``."""
        if not super().verify_request(request, client_address):
            return False
        limits = self._limits(client_address)
        with self._lock:
            over = [c for k, n, c in limits if self._per_key.get(k, 0) >= n]
            if len(self._connections) >= self.max_connections:
                cause = "busy"
            elif over:
                cause = over[0]
            elif not self._watch():
                cause = "busy"
            else:
                self._connections[request] = None
                if limits:
                    keys = self._keys_of[request] = [key for key, _, _ in limits]
                    for key in keys:
                        self._per_key[key] = self._per_key.get(key, 0) + 1
                return True
        self.count_refusal(cause, client_address)
        self.refuse(request, client_address, "busy")
        return False

    def _limits(self, client_address: Any) -> list[tuple[str, int, str]]:
        """The counts a connection from `client_address` adds to: each key,
        its limit and the cause of a refusal over it."""
        limits = []
        if self.max_per_host is not None:
            limits.append((address_key(client_address), self.max_per_host, "per_host"))
        if self.max_per_network is not None:
            network = network_key(client_address)
            if network is not None:
                limits.append((network, self.max_per_network, "per_network"))
        return limits

    def denied(self, request: Any, client_address: Any) -> None:
        """The line protocol says why: ``ERR not allowed``."""
        self.refuse(request, client_address, "not allowed")

    def count_error(self, line: bytes) -> None:
        """Count an ERR line sent, by its reason."""
        with self._lock:
            self.errors[line[4:-1].decode()] += 1

    def statistics(self) -> dict[str, Any]:
        with self._lock:  # answered and the open handlers' counts together
            counts = super().statistics()
            counts["requests"] += sum(
                handler.requests
                for handler in self._connections.values()
                if handler is not None
            )
            counts["errors"] = dict(self.errors)
            counts["open_connections"] = len(self._connections)
        return counts

    def refuse(self, request: Any, client_address: Any, reason: str) -> None:
        """Answer ``ERR reason`` and close, without the serving loop waiting.

        The socket is drained by the watchdog until the client closes or
        `linger` runs out: closing it with unread input would send a reset
        that can overtake the line. Sockets being drained count against the
        open-file limit with those served (`max_sockets`): past it, what has
        already come is drained and the socket closed at once, so that a
        flood of refused clients cannot take the descriptors that the next
        refusal needs.
        """
        try:  # a new socket's buffer is empty: this does not block
            request.sendall(error_line(reason))
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
        except OSError:
            pass
        with self._lock:
            self._forget(request)
            held = len(self._connections) + len(self._draining)
            if held < self.max_sockets and self._watch():
                self._draining[request] = time.monotonic() + self.linger
                return
        drained(request)  # what has come so far, so that the close is no reset
        request.close()

    def service_actions(self) -> None:
        super().service_actions()
        self.closed_log.flush()

    def track(self, handler: Any) -> None:
        """Give a running handler its deadline, and let the watchdog see it."""
        with self._lock:
            handler.deadline = time.monotonic() + self.idle_timeout
            self._connections[handler.request] = handler
            if self._closing:
                handler.expire("server shutting down", self.shutdown_grace)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:  # after this, no other thread touches the socket
            self._forget(request)
            if request in self._draining:
                return  # the watchdog closes it
        super().shutdown_request(request)

    def sweep(self, now: float) -> None:
        """Move the deadlines of connections that answered; cut off the overdue."""
        with self._lock:
            for handler in self._connections.values():
                if handler is None:
                    continue
                if (
                    handler.requests != handler.requests_seen
                    and not handler.stop_reason
                ):
                    handler.requests_seen = handler.requests
                    handler.deadline = now + self.idle_timeout
                elif handler.deadline < now:
                    handler.expire("timeout", self.linger)
            for sock, deadline in list(self._draining.items()):
                if deadline < now or drained(sock):
                    del self._draining[sock]
                    sock.close()

    def server_close(self) -> None:
        """Stop listening, answer the lines already received, then close."""
        self.socket.close()
        with self._lock:
            self._closing = True
            for handler in self._connections.values():
                if handler is not None:
                    handler.expire("server shutting down", self.shutdown_grace)
            for sock in self._draining:
                sock.close()
            self._draining.clear()
        super().server_close()
        watchdog = self._watchdog
        if watchdog is not None and getattr(self, "block_on_close", True):
            self._wake.set()
            watchdog.join()
        self.closed_log.flush(force=True)

    def _forget(self, request: Any) -> None:
        """Take a connection out of the counts (the lock is held)."""
        handler = self._connections.pop(request, None)
        if handler is not None:
            self.answered += handler.requests
        for key in self._keys_of.pop(request, ()):
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]

    def _watch(self) -> bool:
        """Make sure the watchdog runs (the lock is held); False if it cannot."""
        if self._watchdog is None:
            watchdog = threading.Thread(
                target=self._keep_deadlines, name=WATCHDOG_THREAD
            )
            watchdog.daemon = True
            try:
                watchdog.start()
            except RuntimeError as exc:  # out of threads
                logger.warning("cannot start the watchdog thread: %s", exc)
                return False
            self._watchdog = watchdog
        return True

    def _keep_deadlines(self) -> None:
        while True:
            if self._wake.wait(self.sweep_interval):
                self._wake.clear()
            self.sweep(time.monotonic())
            with self._lock:
                if not self._connections and not self._draining:
                    self._watchdog = None
                    return


class ThreadPoolMixIn(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Serves each connection in a thread, and reuses threads that are done.

    Starting a thread costs more than serving a connection's one request,
    so each thread serves connection after connection, and ends after
    `thread_idle` seconds without one. A connection that no thread can be
    started for goes to refuse(request, client_address, "busy"), which may be
    overridden (by default it is closed). Class variables: thread_idle,
    thread_name, batch (the most connections one wake-up of serve_forever()
    takes of those already waiting), and ThreadingMixIn's daemon_threads and
    block_on_close.
    """

    settings: tuple[str, ...] = ("thread_idle",)
    thread_idle = 10.0  # seconds a thread waits for another connection, then ends
    thread_name = CONNECTION_THREAD
    batch = 8  # connections accepted per wake-up of serve_forever(), at most

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool_lock = threading.Lock()
        self._threads_idle = 0  # idle threads that no connection has claimed
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()
        self._thread_pool: set[threading.Thread] = set()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to an idle thread, or start a thread for it;
        then the same for those already waiting, up to `batch` in all, where
        accept() does not wait for them (TimeServer's does not)."""
        self._hand_off(request, client_address)
        if accepts_at_once(self.socket):
            serve_waiting(self, self.get_request, self._hand_off, self.batch - 1)

    def _hand_off(self, request: Any, client_address: Any) -> None:
        with self._pool_lock:
            claimed = self._threads_idle > 0
            if claimed:
                self._threads_idle -= 1
        if claimed:
            self._handoff.put((request, client_address))
            return
        thread = threading.Thread(
            target=self._serve_connections,
            args=(request, client_address),
            name=self.thread_name,
            daemon=self.daemon_threads,
        )
        with self._pool_lock:
            self._thread_pool.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # a process or memory limit
            with self._pool_lock:
                self._thread_pool.discard(thread)
            logger.warning(
                "%s: cannot start a thread: %s", format_address(client_address), exc
            )
            self.refuse(request, client_address, "busy")

    def refuse(self, request: Any, client_address: Any, reason: str) -> None:
        """Close a connection that cannot be served; ConnectionRegistry says why."""
        self.shutdown_request(request)

    def _serve_connections(self, request: Any, client_address: Any) -> None:
        try:
            while request is not None:
                try:
                    self.finish_request(request, client_address)
                except Exception:
                    self.handle_error(request, client_address)
                finally:
                    # Idle before the close, so that a client that connects
                    # again as soon as it has its answer finds this thread.
                    with self._pool_lock:
                        self._threads_idle += 1
                    self.shutdown_request(request)
                request, client_address = self._next_connection()
        finally:
            with self._pool_lock:
                self._thread_pool.discard(threading.current_thread())

    def _next_connection(self) -> tuple:
        while True:
            try:
                return self._handoff.get(timeout=self.thread_idle)
            except queue.Empty:
                with self._pool_lock:
                    if self._threads_idle > 0:  # not claimed: end the thread
                        self._threads_idle -= 1
                        return None, None
                # process_request() has claimed this thread: a connection is coming

    def server_close(self) -> None:
        """Wake the idle threads so they end, then join every thread."""
        with self._pool_lock:
            threads = list(self._thread_pool)
        for _ in threads:
            self._handoff.put((None, None))  # ends a thread once it is idle
        super().server_close()
        if self.block_on_close:
            for thread in threads:
                thread.join()


class AcceptBackoffMixIn(socketserver.TCPServer):
    """When accept() fails for want of file descriptors, pause instead of spinning.

    The connection that cannot be accepted stays in the backlog, so the
    listening socket stays readable and serve_forever() would retry at
    once, forever. Pausing longer each time, up to the longest pause,
    leaves the CPU to the handlers whose connections will free files. The
    log says when this starts and when it ends. Class variable: accept_pause.
    """

    accept_pause = (0.01, 0.5)  # first and longest pause, in seconds

    _failed_accepts = 0

    def get_request(self) -> tuple:
        try:
            accepted = super().get_request()
        except OSError as exc:
            if exc.errno not in OUT_OF_FILES:
                raise
            self._failed_accepts += 1
            if self._failed_accepts == 1:
                logger.warning("cannot accept connections: %s; pausing", exc.strerror)
            first, longest = self.accept_pause
            time.sleep(min(longest, first * 2 ** (self._failed_accepts - 1)))
            raise
        if self._failed_accepts:
            logger.warning(
                "accepting connections again, after %d failed attempts",
                self._failed_accepts,
            )
            self._failed_accepts = 0
        return accepted


class AnyAddressMixIn(socketserver.TCPServer):
    """Binds what socketserver binds, in either address family.

    The family comes from getaddrinfo(), so a host name, an IPv4 or an IPv6
    address all work; ``""`` means every IPv4 interface, as in socketserver,
    and ``"::"`` every IPv6 and IPv4 one at once, as in http.server. Comes
    before TCPServer or UDPServer in the bases. on_socket() makes a server
    on a socket bound elsewhere (systemd's socket activation); the options
    a server sets on its socket go in socket_options(), for both.
    """

    @classmethod
    def on_socket(cls, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        """A server on `sock`, which is already bound (and listening, for TCP)."""
        address = sock.getsockname()
        server = cls(address, *args, bind_and_activate=False, **kwargs)
        server.socket.close()
        server.socket = sock
        server.server_address = address
        server.socket_options()
        return server

    def socket_options(self) -> None:
        """Set options on the listening socket; called before it is bound."""

    def __init__(self, server_address: tuple, *args: Any, **kwargs: Any) -> None:
        host, port = server_address[:2]
        socket_type = getattr(self, "socket_type", socket.SOCK_STREAM)
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket_type, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        super().__init__(cast(tuple, address), *args, **kwargs)

    def server_bind(self) -> None:
        self.socket_options()
        if self.address_family == socket.AF_INET6:
            try:  # "::" serves IPv4 too
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()


class TimeServer(
    SettingsMixIn,
    ConnectionRegistry,
    ThreadPoolMixIn,
    AcceptBackoffMixIn,
    AnyAddressMixIn,
    socketserver.TCPServer,
):
    """A threading TCP server for the time protocol, with limits on every client.

    A connection may send a line of at most `max_line` bytes and must finish
    each line within `idle_timeout` seconds; at most `max_connections` are
    served at once, and one more gets ``ERR busy``. Settings of its own:
    max_line, clock (any callable returning an aware datetime), send_buffer.
    """

    settings: tuple[str, ...] = ("max_line", "clock", "send_buffer")
    max_line = MAX_LINE_BYTES  # longest request line, line ending not counted
    clock: Clock = local_now
    send_buffer = 64 * 1024  # replies the kernel holds for a client that reads slowly
    allow_reuse_address = True  # restart at once on the same port
    request_queue_size = socket.SOMAXCONN

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[TimeRequestHandler] = TimeRequestHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(server_address, handler_class, bind_and_activate, **settings)

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection; a client that resets or vanishes is ordinary."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.debug("%s: %s", format_address(client_address), exc)
        else:
            logger.exception("%s: unexpected error", format_address(client_address))


class OneShotServer(
    SettingsMixIn,
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
    clock: Clock = local_now
    allow_reuse_address = True
    request_queue_size = socket.SOMAXCONN

    handle_error = TimeServer.handle_error


if __name__ == "__main__":  # python -m timeservice.server
    from timeservice.service import main

    sys.exit(main())
