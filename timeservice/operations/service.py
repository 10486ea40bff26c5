"""Several servers in one process, watched and stopped together, and the
signals that stop them."""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Sequence

from ..wire.addresses import format_address
from . import systemd

logger = logging.getLogger(__name__)


POLL_INTERVAL = 0.5  # how often an idle server's loop turns


class ServerStopped(Exception):
    """A server's loop ended on its own; the message says which and why."""


def describe(server: socketserver.BaseServer) -> str:
    """A server as the log names it: its protocol, transport and address,
    as in ``ntp server (UDP, 127.0.0.1 port 123)``."""
    protocol = getattr(server.RequestHandlerClass, "protocol", "a")
    udp = getattr(server, "socket_type", None) == socket.SOCK_DGRAM
    where = format_address(server.server_address)  # type: ignore[arg-type]
    return f"{protocol} server ({'UDP' if udp else 'TCP'}, {where})"


class Service:
    """Several servers in one process, watched and stopped together.

    serve_forever() serves each server in a thread of its own; stop(), from
    any other thread or a signal handler, ends them all, and each server's
    server_close() then finishes its clients. A server whose loop ends on
    its own (an exception out of serve_forever(), or a shutdown() from
    elsewhere) ends the whole service too, and serve_forever() then raises
    ServerStopped: a service half serving is worse than one that stops and
    is restarted. watch() calls a function, such as systemd's watchdog,
    only while every server's loop still turns.
    """

    def __init__(self, servers: Sequence[socketserver.BaseServer]) -> None:
        if not servers:
            raise ValueError("a service needs a server")
        self.servers = list(servers)
        self._stopped = False  # stop() was called; a plain flag, set from signals
        self._ended = threading.Event()  # serve_forever() is stopping its servers
        # While serving, a byte on this pair wakes serve_forever(): from
        # stop(), which may run in a signal handler and so takes no lock,
        # or from a loop that ended.
        self._wake: socket.socket | None = None
        self._failure: str | None = None
        self._watcher: tuple[float, Callable[[], None]] | None = None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        waking, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        threads = [
            threading.Thread(
                target=self._serve,
                args=(server, poll_interval),
                name=f"timeservice {describe(server)}",
            )
            for server in self.servers
        ]
        for thread in threads:
            thread.start()
        if self._watcher is not None:
            threads.append(threading.Thread(target=self._watch, daemon=True))
            threads[-1].start()
        try:
            if not self._stopped:  # a stop() before the pair existed
                select.select([waking], [], [])
        finally:
            self._ended.set()
            # Each shutdown() waits for its loop's next turn: all at once.
            stopping = [
                threading.Thread(target=server.shutdown) for server in self.servers
            ]
            for thread in stopping:
                thread.start()
            for thread in stopping + threads:
                thread.join()
            for server in self.servers:
                server.server_close()
            waking.close()
            self._wake.close()
        if self._failure is not None:
            raise ServerStopped(self._failure)

    def stop(self) -> None:
        """End serve_forever(), from any thread but one the servers run, or
        from a signal handler."""
        self._stopped = True
        self._wake_up()

    def watch(self, interval: float, beat: Callable[[], None]) -> None:
        """While serving, call `beat` every `interval` seconds, but only if every
        server's loop has turned since the last call (servers without a turn
        count are taken on trust). Call before serve_forever()."""
        self._watcher = (interval, beat)

    def _serve(self, server: socketserver.BaseServer, poll_interval: float) -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # any end but a stop ends the service
            self._fail(f"{describe(server)} stopped: {exc!r}")
        else:
            if not self._stopped:
                self._fail(f"{describe(server)} stopped serving")
        finally:
            self._wake_up()

    def _wake_up(self) -> None:
        # Not yet serving, full (a byte is there already) or closed (serving
        # is over): either way serve_forever() needs no more waking.
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"\0")

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason

    def _watch(self) -> None:
        assert self._watcher is not None
        interval, beat = self._watcher
        last = [getattr(server, "turns", None) for server in self.servers]
        while not self._ended.wait(interval):
            now = [getattr(server, "turns", None) for server in self.servers]
            if all(
                turns is None or turns != before
                for turns, before in zip(now, last, strict=True)
            ):
                beat()
            last = now


def serve(service: Service, notifier: systemd.Notifier) -> int:
    """Serve until stopped (0) or until a server's loop ends on its own (1,
    after one line in the log). Under systemd's watchdog, WATCHDOG=1 goes
    out every half of its timeout while every server's loop still turns."""
    poll_interval = POLL_INTERVAL
    if notifier.watchdog is not None:
        interval = notifier.watchdog / 2
        poll_interval = min(poll_interval, interval / 4)  # idle loops turn too
        service.watch(interval, lambda: notifier.notify("WATCHDOG=1"))
    try:
        service.serve_forever(poll_interval)
    except ServerStopped as exc:
        logger.error("%s; ending the service", exc)
        return 1
    return 0


# SIGBREAK is Ctrl-Break on Windows, which has no SIGTERM from other processes.
STOP_SIGNALS = [
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGBREAK")
    if hasattr(signal, name)
]


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While in the block, SIGINT and SIGTERM call `stop`, such as
    Service.stop(), which only wakes the thread that then stops the servers:
    a handler runs between any two steps of the main thread, which may
    hold a lock the handler would wait for."""

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s received, shutting down", signal.Signals(signum).name)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
