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

from ..policy.logs import format_address

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


# The signals that ask a service to stop or reload; the threads it starts
# block them, so that the kernel delivers them to the main thread, whose
# wait they interrupt (a signal a serving thread took would run its Python
# handler only once the main thread woke for something else).
SIGNALS = {
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP")
    if hasattr(signal, name)
}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Block the service's signals in this thread while in the block: the
    threads it starts are born with them blocked (a thread that blocked
    them itself would have taken one in the moment before), and those that
    come meanwhile wait for the block's end (where threads have masks)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def woken_by_signals(wake: socket.socket) -> Iterator[None]:
    """While in the block, any signal writes a byte to `wake` (from the
    interpreter's own C handler, signal.set_wakeup_fd()). A signal that
    comes just before the main thread enters its wait is handled only once
    the thread runs Python again; the byte makes sure it does. Only the main
    thread can ask for it; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
    except (ValueError, TypeError):  # not the main interpreter; old signature
        yield
        return
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)


class Service:
    """Several servers in one process, watched and stopped together.

    serve_forever() serves each server in a thread of its own; stop(), from
    any other thread or a signal handler, ends them all, and each server's
    server_close() then finishes its clients. A server whose loop ends on
    its own (an exception out of serve_forever(), or a shutdown() from
    elsewhere) ends the whole service too, and serve_forever() then raises
    ServerStopped: a service half serving is worse than one that stops and
    is restarted. watch() calls a function, such as systemd's watchdog,
    only while every server's loop still turns. reload(), from a signal
    handler too, has serve_forever()'s thread call on_reload (by default it
    logs that there is nothing to reload); on_stop is called there once a
    stop() has come, before the servers stop. stop() and reload() only set
    a flag and write a byte: what they set in motion, and its log lines,
    happen in serve_forever()'s thread.
    """

    def __init__(self, servers: Sequence[socketserver.BaseServer]) -> None:
        if not servers:
            raise ValueError("a service needs a server")
        self.servers = list(servers)
        self.on_stop: Callable[[], None] = lambda: None
        self.on_reload: Callable[[], object] = lambda: logger.info(
            "reload asked; there is nothing to reload"
        )
        self._stopped = False  # stop() was called; a plain flag, set from signals
        self._reason: str | None = None  # what stop() was told, for the log
        self._reloads = 0  # reload() calls, counted from signal handlers
        self._ended = threading.Event()  # serve_forever() is stopping its servers
        # While serving, a byte on this pair wakes serve_forever(): from
        # stop() or reload(), which may run in a signal handler and so take
        # no lock, or from a loop that ended.
        self._wake: socket.socket | None = None
        self._failure: str | None = None
        self._watcher: tuple[float, Callable[[], None]] | None = None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve every server, each in its own thread, until stop(); ServerStopped if
        one ends on its own."""
        waking, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        waking.setblocking(False)
        threads = [
            threading.Thread(
                target=self._serve,
                args=(server, poll_interval),
                name=f"timeservice {describe(server)}",
            )
            for server in self.servers
        ]
        if self._watcher is not None:
            threads.append(threading.Thread(target=self._watch, daemon=True))
        with signals_held():
            for thread in threads:
                thread.start()
        try:
            with woken_by_signals(self._wake):
                self._wait(waking)
        finally:
            self._ended.set()
            if self._stopped:
                if self._reason:
                    logger.info("%s, shutting down", self._reason)
                self.on_stop()
            # Each shutdown() waits for its loop's next turn: all at once.
            stopping = [
                threading.Thread(target=server.shutdown) for server in self.servers
            ]
            with signals_held():
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

    def _wait(self, waking: socket.socket) -> None:
        """Until a stop or a loop's end, doing the reloads asked meanwhile."""
        while not self._stopped and self._failure is None:
            while self._reloads and not self._stopped:  # those asked before too
                self._reloads -= 1
                self.on_reload()
            select.select([waking], [], [])
            with contextlib.suppress(BlockingIOError):
                waking.recv(4096)

    def stop(self, reason: str | None = None) -> None:
        """End serve_forever(), from any thread but one the servers run, or
        from a signal handler; `reason` is logged when it does."""
        self._reason = reason
        self._stopped = True
        self._wake_up()

    def reload(self) -> None:
        """Have serve_forever()'s thread call on_reload; from a signal
        handler too."""
        self._reloads += 1
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


def serve(
    service: Service,
    beat: Callable[[], None] | None = None,
    interval: float | None = None,
) -> int:
    """Serve until stopped (0) or until a server's loop ends on its own (1,
    after one line in the log). `beat` is called every `interval` seconds
    while every server's loop still turns: systemd's WATCHDOG=1, or a
    worker's beat to the parent that watches it."""
    poll_interval = POLL_INTERVAL
    if beat is not None and interval is not None:
        poll_interval = min(poll_interval, interval / 4)  # idle loops turn too
        service.watch(interval, beat)
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


class Received:
    """The stop signal that came first in a stop_on_signals() block, if any."""

    stop: int | None = None


@contextlib.contextmanager
def stop_on_signals(
    stop: Callable[[str], None], reload: Callable[[], None] | None = None
) -> Iterator[Received]:
    """While in the block, SIGINT and SIGTERM call `stop` with what came
    (``SIGTERM received``), and SIGHUP calls `reload`, as Service.stop() and
    Service.reload() take them: they only set a flag and wake the thread that
    then acts and logs. A handler runs between any two steps of the main
    thread, which may hold a lock the handler would wait for, so it takes
    none, logging's included. The block gets a Received that says which
    stop signal came first."""
    received = Received()

    def on_signal(signum: int, frame: object) -> None:
        if received.stop is None:
            received.stop = signum
        stop(f"{signal.Signals(signum).name} received")

    def on_hangup(signum: int, frame: object) -> None:
        if reload is not None:
            reload()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    if hasattr(signal, "SIGHUP"):
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
        if hasattr(signal, "pthread_sigmask"):  # one held until now comes now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
