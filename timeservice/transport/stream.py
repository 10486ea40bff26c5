"""The stream servers' composition: socketserver's threading TCP server
with every part a stream protocol here needs (the registry's caps and
deadlines, the requests the loop answers itself, the thread pool, the
accept back-off, any address), and the one order in which such a server
closes."""

from __future__ import annotations

import socket
import socketserver

from .binding import AnyAddressMixIn
from .inloop import InLoopMixIn
from .loop import LoopMixIn
from .pool import AcceptBackoffMixIn, ThreadPoolMixIn
from .registry import ConnectionRegistry
from .settings import SettingsMixIn


class StreamServer(
    SettingsMixIn,
    InLoopMixIn,
    LoopMixIn,
    ConnectionRegistry,
    ThreadPoolMixIn,
    AcceptBackoffMixIn,
    AnyAddressMixIn,
    socketserver.TCPServer,
):
    """A threading TCP server with limits on every client, as the line
    protocol and NTS Key Establishment serve: each part's docstring lists
    what may be overridden."""

    allow_reuse_address = True  # restart at once on the same port
    request_queue_size = socket.SOMAXCONN

    def server_close(self) -> None:
        """Close in this order, each step once: stop listening; tell the
        handlers to answer what they have and close, and close the sockets
        being drained; end the idle threads and join every thread; wait for
        the watchdog; log what the summarised logs hold."""
        self.socket.close()
        self.expire_connections()
        self.join_threads()
        self.join_watchdog()
        self.flush_logs()
