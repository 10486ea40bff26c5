"""The stream servers' registry of open connections: the caps in all, per
address and per IPv6 /64, the idle deadlines kept by a watchdog thread, the
refused drained within the open-file limit, and a clean close. What a
refused or cut-off client is told is its protocol's: the registry gives the
cause (refusal_words(), expire()), the server and its handlers the words."""

from __future__ import annotations

import collections
import logging
import socket
import socketserver
import struct
import threading
import time
from typing import Any

from ..host import capabilities
from ..policy.connections import ConnectionLimits
from ..policy.logs import BoundedLog
from ..policy.sources import NETWORK_FACTOR
from .admission import AdmissionMixIn

logger = logging.getLogger(__name__)


IDLE_TIMEOUT = 60.0


MAX_CONNECTIONS = 512


MAX_PER_HOST = 64  # an eighth of the default cap: one host alone cannot fill it


MIN_CONNECTIONS = 128


RESERVED_FILES = 32  # for the listening socket, standard streams, logging


WATCHDOG_THREAD = "timeservice watchdog"  # the thread that keeps the deadlines


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


class Tracked:
    """What the registry keeps of a running handler: its deadline, the count
    of answers it had when the deadline was last moved, whether it is cut."""

    __slots__ = ("handler", "deadline", "seen", "cut")

    def __init__(self, handler: Any, deadline: float) -> None:
        self.handler, self.deadline, self.seen, self.cut = handler, deadline, 0, False


class ConnectionRegistry(AdmissionMixIn, socketserver.TCPServer):
    """Knows every open connection: the caps, the idle deadlines, a clean close.

    At most `max_connections` are open at once, at most `max_per_host` from
    one address and `max_per_network` from one IPv6 /64 (None for no such
    limit); a /64 at its limit is shared fairly (see ConnectionLimits): a
    host with fewer connections than the /64's heaviest address gets in, and
    one of that address's connections is cut off.
    Methods that may be overridden: refusal_words(cause), the bytes a connection
    that cannot be served is sent before it is closed (by default none;
    the cause is busy, per_host, per_network or denied); sweep(now) keeps
    the deadlines. It extends verify_request() and shutdown_request(), and
    gives server_close() its steps expire_connections() and
    join_watchdog(); handlers call track(handler) once they run, count
    their answers in `requests`, have expire(cause, grace, first) called
    (cause timeout, shutdown or displaced) when they are cut off, and call
    count_error(reason) for each error they send.

    The deadlines are kept by a watchdog thread that runs while any
    connection is open, so they hold however the program serves:
    serve_forever(), handle_request(), or between shutdown() and
    server_close(). The handlers only count their answers and read no clock;
    their deadlines are the registry's own.
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
        self._connections: dict[socket.socket, Tracked | None] = {}  # once it runs
        self._keys_of: dict[socket.socket, tuple[str, ...]] = {}  # whom each counts as
        self.limits = ConnectionLimits(
            self.max_connections, self.max_per_host, self.max_per_network
        )
        self.errors: collections.Counter[str] = collections.Counter()
        self._draining: dict[socket.socket, float] = {}  # refused, until EOF or then
        self.closed_log = BoundedLog("connection(s) closed")
        self._watchdog: threading.Thread | None = None
        self._wake = threading.Event()
        self._closing = False
        super().__init__(*args, **kwargs)
        self.summaries.append(self.closed_log)  # the loop's, which flushes it

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection while under the caps; else refuse it."""
        if not super().verify_request(request, client_address):
            return False
        keys = self.limits.keys(client_address)
        with self._lock:
            cause, displaced = self.limits.admit(keys)
            if displaced is not None and not self._displace(displaced):
                cause = "per_network"
            if cause is None and not self._watch():
                cause = "busy"
            if cause is None:
                self._connections[request] = None
                self.limits.add(keys)
                self._keys_of[request] = keys
                return True
        self.count_refusal(cause, client_address)
        self.refuse(request, client_address, cause)
        return False

    def _displace(self, key: str) -> bool:
        """Cut the oldest running connection of the address `key`, to make
        room in its /64 for a host that holds fewer (the lock is held);
        False if it has none that can be cut."""
        for sock, keys in self._keys_of.items():
            tracked = self._connections.get(sock)
            if keys and keys[0] == key and tracked is not None and not tracked.cut:
                self.limits.displace(keys)
                self._keys_of[sock] = ()  # counted in all until it closes
                self._cut(tracked, "displaced", self.linger)
                return True
        return False

    def settings_changed(self, names: set[str]) -> None:
        """New caps count from now, the connections open included."""
        super().settings_changed(names)
        with self._lock:
            self.limits.most = connection_cap(self.max_connections)
            self.limits.per_host = self.max_per_host
            self.limits.per_network = self.max_per_network

    def denied(self, request: Any, client_address: Any) -> None:
        self.refuse(request, client_address, "denied")

    def refusal_words(self, cause: str) -> bytes:
        """What a connection refused for `cause` is sent; by default nothing."""
        return b""

    def count_error(self, reason: str) -> None:
        """Count an error sent to a client, by its reason."""
        with self._lock:
            self.errors[reason] += 1

    def statistics(self) -> dict[str, Any]:
        with self._lock:  # answered and the open handlers' counts together
            counts = super().statistics()
            counts["requests"] += sum(
                tracked.handler.requests
                for tracked in self._connections.values()
                if tracked is not None
            )
            counts["errors"] = dict(self.errors)
            counts["open_connections"] = len(self._connections)
        return counts

    def refuse(self, request: Any, client_address: Any, cause: str) -> None:
        """Send what refusal_words(cause) says and close, without the serving
        loop waiting.

        The socket is drained by the watchdog until the client closes or
        `linger` runs out: closing it with unread input would send a reset
        that can overtake the line. Sockets being drained count against the
        open-file limit with those served (`max_sockets`): past it, what has
        already come is drained and the socket closed at once, so that a
        flood of refused clients cannot take the descriptors that the next
        refusal needs.
        """
        try:  # a new socket's buffer is empty: this does not block
            request.sendall(self.refusal_words(cause))
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

    def track(self, handler: Any) -> None:
        """Give a running handler its deadline, and let the watchdog see it."""
        with self._lock:
            tracked = Tracked(handler, time.monotonic() + self.idle_timeout)
            self._connections[handler.request] = tracked
            if self._closing:
                self._cut(tracked, "shutdown", self.shutdown_grace)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:  # after this, no other thread touches the socket
            self._forget(request)
            if request in self._draining:
                return  # the watchdog closes it
        super().shutdown_request(request)

    def sweep(self, now: float) -> None:
        """Move the deadlines of connections that answered; cut off the overdue."""
        with self._lock:
            for tracked in self._connections.values():
                if tracked is None:
                    continue
                answered = tracked.handler.requests
                if answered != tracked.seen and not tracked.cut:
                    tracked.seen = answered
                    tracked.deadline = now + self.idle_timeout
                elif tracked.deadline < now:
                    self._cut(tracked, "timeout", self.linger)
            for sock, deadline in list(self._draining.items()):
                if deadline < now or drained(sock):
                    del self._draining[sock]
                    sock.close()

    def expire_connections(self) -> None:
        """Tell every handler to answer what it has and close (``ERR server
        shutting down``), and close the sockets being drained; a step of
        server_close()."""
        with self._lock:
            self._closing = True
            for tracked in self._connections.values():
                if tracked is not None:
                    self._cut(tracked, "shutdown", self.shutdown_grace)
            for sock in self._draining:
                sock.close()
            self._draining.clear()

    def join_watchdog(self) -> None:
        """Wait for the watchdog to see the handlers out; a step of server_close()."""
        watchdog = self._watchdog
        if watchdog is not None and getattr(self, "block_on_close", True):
            self._wake.set()
            watchdog.join()

    def _forget(self, request: Any) -> None:
        """Take a connection out of the counts (the lock is held)."""
        if request not in self._connections:
            return
        tracked = self._connections.pop(request)
        if tracked is not None:
            self.answered += tracked.handler.requests
        self.limits.remove(self._keys_of.pop(request))

    def _cut(self, tracked: Tracked, cause: str, grace: float) -> None:
        """Cut a connection off, the first time with its handler's last word
        and `grace` seconds to say it, the next (still there) at once."""
        tracked.handler.expire(cause, grace, first=not tracked.cut)
        if not tracked.cut:
            tracked.cut = True
            tracked.deadline = time.monotonic() + grace

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
