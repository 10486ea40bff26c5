"""The bounded HTTP server the metrics are served from: clients cannot take
its memory or its threads.

http.server reads a request's head with a timeout per read, up to 100 header
lines of 64 KB each, on as many connections as come: a few slow clients can
hold hundreds of megabytes and as many threads. Here a connection has
`request_seconds` for its whole request head and `max_request_bytes` for it,
at most `max_connections` are served at once and `max_per_host` from one
address (one more is closed at once), and the access list applies as for
every server. Errors are one line in the
log; a client that resets is ordinary.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import socket
import threading
import time
from typing import Any

from ..policy.connections import ConnectionLimits
from ..policy.sources import NETWORK_FACTOR
from ..transport.admission import AdmissionMixIn
from ..transport.binding import AnyAddressMixIn
from ..transport.loop import LoopMixIn
from ..transport.settings import SettingsMixIn

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192  # a scraper's GET is a few hundred bytes
REQUEST_SECONDS = 5.0  # for the whole request head, however it trickles in
MAX_CONNECTIONS = 16
MAX_PER_HOST = 4  # a quarter: one address cannot hold every scrape's place


class BoundedReader:
    """A connection's request head as lines: at most `limit` bytes in all,
    all of them within `seconds`. Past the limit readline() raises
    http.client.LineTooLong, past the time TimeoutError."""

    def __init__(self, sock: Any, limit: int, seconds: float) -> None:
        self.sock, self.left = sock, limit
        self.deadline = time.monotonic() + seconds
        self.buffer = b""

    def readline(self, size: int = -1) -> bytes:
        """A line of at most `size` bytes; LineTooLong once the request's head
        passes its bound."""
        while b"\n" not in self.buffer and not 0 <= size <= len(self.buffer):
            if self.left <= 0:
                raise http.client.LineTooLong("request head")
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not complete in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(min(4096, self.left))
            if not chunk:
                break
            self.left -= len(chunk)
            self.buffer += chunk
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        if 0 <= size < end:
            end = size
        line, self.buffer = self.buffer[:end], self.buffer[end:]
        return line

    def close(self) -> None:
        """Forget what is buffered: the socket is the handler's to close."""
        self.buffer = b""


class EndpointHandler(http.server.BaseHTTPRequestHandler):
    """One request per connection, read through a BoundedReader; subclasses
    add do_GET() and the like. Replies get `reply_seconds` to go out."""

    server: EndpointServer
    server_version = "timeservice"
    reply_seconds = 10.0

    def setup(self) -> None:
        """Read through a BoundedReader, so no client can send an endless request."""
        super().setup()
        self.rfile.close()  # the reader http.server made; this one is bounded
        self.rfile = BoundedReader(  # type: ignore[assignment]
            self.connection, self.server.max_request_bytes, self.server.request_seconds
        )

    def end_headers(self) -> None:
        self.connection.settimeout(self.reply_seconds)  # the head's deadline is over
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: %s", self.address_string(), format % args)


class EndpointServer(
    SettingsMixIn,
    LoopMixIn,
    AdmissionMixIn,
    AnyAddressMixIn,
    http.server.ThreadingHTTPServer,
):
    """An HTTP server with a thread per connection, at most `max_connections`
    of them, `max_per_host` from one address and NETWORK_FACTOR times that
    from one IPv6 /64. Settings: max_connections, max_per_host,
    max_request_bytes, request_seconds, and AdmissionMixIn's (a denied
    client is closed at once)."""

    settings: tuple[str, ...] = (
        "max_connections",
        "max_per_host",
        "max_request_bytes",
        "request_seconds",
    )
    max_connections = MAX_CONNECTIONS
    max_per_host: int | None = MAX_PER_HOST
    # A client that resets, is too slow or sends too much is ordinary; one
    # line for anything else, which a scraper can cause by the thousand.
    ordinary = (OSError, http.client.HTTPException)
    traceback_on_fault = False
    # socketserver's 5: a few connections refused in a burst would leave the
    # next scrape waiting for the kernel to retry its handshake.
    request_queue_size = socket.SOMAXCONN
    max_request_bytes = MAX_REQUEST_BYTES
    request_seconds = REQUEST_SECONDS

    def __init__(
        self,
        server_address: tuple,
        handler_class: type[EndpointHandler],
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        self._open: dict[Any, tuple[str, ...]] = {}  # whom each counts as
        self._open_lock = threading.Lock()
        super().__init__(server_address, handler_class, bind_and_activate, **settings)
        per_host = self.max_per_host
        per_network = None if per_host is None else NETWORK_FACTOR * per_host
        self.limits = ConnectionLimits(self.max_connections, per_host, per_network)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not super().verify_request(request, client_address):
            return False
        keys = self.limits.keys(client_address)
        with self._open_lock:
            cause = self.limits.refusal(keys)
            if cause is None:
                self.limits.add(keys)
                self._open[request] = keys
                return True
        self.count_refusal(cause, client_address)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: its place is free again
            self._closed(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed(request)

    def _closed(self, request: Any) -> None:
        with self._open_lock:
            keys = self._open.pop(request, None)
            if keys is not None:
                self.limits.remove(keys)

    def server_close(self) -> None:
        """Stop listening, log what the logs hold."""
        super().server_close()
        self.flush_logs()
