"""Serving each connection in a thread (each that the serving loop does
not answer itself, see inloop), reused once it is done, the connections
already waiting taken in one wake-up; and pausing accept() when the file
descriptors run out instead of spinning."""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from ..host import capabilities
from ..policy.logs import format_address

logger = logging.getLogger(__name__)


CONNECTION_THREAD = "timeservice connection"  # the name of the threads that serve


OUT_OF_FILES = {  # what accept() fails with for want of descriptors or memory
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "WSAEMFILE", "WSAENOBUFS")
    if hasattr(errno, name)
}


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


class ThreadSet(set):
    """The threads serving connections, where ThreadingMixIn keeps its own
    (`_threads`), so that its server_close() and CPython's tests see them."""

    def join(self) -> None:
        """Wait for every thread, as ThreadingMixIn.server_close() does."""
        for thread in list(self):
            thread.join()


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
        self._threads = ThreadSet()  # where ThreadingMixIn keeps its threads
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection (serve_connection()); then the same for those
        already waiting, up to `batch` in all, where accept() does not wait
        for them (TimeServer's does not)."""
        self.serve_connection(request, client_address)
        if accepts_at_once(self.socket):
            serve_waiting(self, self.get_request, self.serve_connection, self.batch - 1)

    def serve_connection(self, request: Any, client_address: Any) -> None:
        """May be extended: hand the connection to an idle thread, or start
        a thread for it."""
        self._hand_off(request, client_address)

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
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # a process or memory limit
            with self._pool_lock:
                self._threads.discard(thread)
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
                self._threads.discard(threading.current_thread())

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

    def join_threads(self) -> None:
        """Wake the idle threads so they end, then join every thread; a step
        of server_close()."""
        with self._pool_lock:
            threads = list(self._threads)
        for _ in threads:
            self._handoff.put((None, None))  # ends a thread once it is idle
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
