"""What a serving loop does besides serving: it counts its turns, so that a
watcher can tell a loop that turns from one that hangs, and logs what goes
wrong with a request in one way for each kind of transport."""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import selectors
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..policy.logs import format_address

logger = logging.getLogger(__name__)


class LoopMixIn(socketserver.BaseServer):
    """The turns of serve_forever()'s loop (`turns`, read by Service.watch()),
    the summarised logs its parts add to `summaries` (flushed each turn, and
    all of them by flush_logs(), a step of server_close()), and
    handle_error(): an error of the client's making (`ordinary`: a reset, a
    timeout) is one line at debug level; anything else is a fault of this
    server's, logged at error level, with its traceback where
    `traceback_on_fault` (a connection's fault is worth one; a datagram's,
    which anyone can send by the thousand, is one line). Never printed."""

    ordinary: tuple[type[BaseException], ...] = (OSError,)
    traceback_on_fault = True
    turns = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stop_asked = False
        self._loop_ended = threading.Event()
        self.held: dict[int, Any] = {}  # by descriptor, what hold() gave the loop
        self._poll: Any = None  # the loop's poll object, while it runs
        self._loop_thread: int | None = None
        self.summaries: list[Any] = []  # each with flush(force=False), waiting
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """socketserver's loop, waiting on a poll object of its own rather
        than a selectors one (whose select() is Python, and a datagram's
        answer costs little more): wait, serve what is ready, then
        service_actions(), until shutdown(). The descriptors that hold()
        gave it are watched in the same wait, and ready() is called with
        what each holds."""
        self._loop_ended.clear()  # a shutdown() asked before this one starts holds
        held, own = self.held, self.fileno()  # type: ignore[attr-defined]
        readable = self.ready
        try:
            with waiting(self, poll_interval) as (wait, self._poll):
                self._loop_thread = threading.get_ident()
                while not self._stop_asked:
                    ready = wait()
                    if self._stop_asked:
                        break
                    if held:
                        for fd, _ in ready:
                            if fd == own:
                                self._handle_request_noblock()  # type: ignore[attr-defined]
                            elif (holding := held.get(fd)) is not None:
                                readable(holding)
                    elif ready:
                        self._handle_request_noblock()  # type: ignore[attr-defined]
                    self.service_actions()
        finally:
            self._poll = self._loop_thread = None
            try:
                self.release_held()
            finally:
                self._stop_asked = False
                self._loop_ended.set()

    def hold(self, fd: int, holding: Any) -> bool:
        """Have the loop call ready(holding) whenever descriptor `fd` can be
        read, until let_go(fd); False where it cannot: outside the loop's
        thread, or without poll()."""
        if self._poll is None or threading.get_ident() != self._loop_thread:
            return False
        self._poll.register(fd, select.POLLIN)
        self.held[fd] = holding
        return True

    def let_go(self, fd: int) -> None:
        """Stop watching a descriptor hold() gave the loop (before it closes)."""
        if self.held.pop(fd, None) is not None and self._poll is not None:
            self._poll.unregister(fd)

    def ready(self, holding: Any) -> object:
        """May be extended: what hold() was given for a descriptor that can
        be read now."""
        return None

    def release_held(self) -> None:
        """May be extended: the loop ends, and what it held (`held`) must go
        elsewhere."""

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it has, as socketserver's
        shutdown() does (from another thread: in the loop's, it waits
        forever)."""
        self._stop_asked = True
        self._loop_ended.wait()

    def service_actions(self) -> None:
        self.turns += 1
        for log in self.summaries:
            if log.waiting:  # rarely: flush() is a call more on every turn
                log.flush()
        super().service_actions()

    def flush_logs(self) -> None:
        """Log what the summarised logs still hold; a step of server_close()."""
        for log in self.summaries:
            log.flush(force=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        who = format_address(client_address)
        if isinstance(exc, self.ordinary):
            logger.debug("%s: %r", who, exc)
        elif self.traceback_on_fault:
            logger.exception("%s: unexpected error", who)
        else:
            logger.error("%s: %r", who, exc)


@contextlib.contextmanager
def waiting(
    server: Any, timeout: float | None
) -> Iterator[tuple[Callable[[], list], Any]]:
    """A call that waits until `server`'s socket is ready or `timeout`
    seconds pass (None: until ready), and the poll object it waits on:
    poll() where the platform has it, else a selector (and no poll object),
    closed when the loop ends."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(server, select.POLLIN)
        milliseconds = None if timeout is None else timeout * 1000
        yield functools.partial(poller.poll, milliseconds), poller
        return
    with selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        yield functools.partial(selector.select, timeout), None


def clock_failed(client_address: Any, exc: Exception) -> None:
    """One line for a clock that failed a handler: nothing goes out (RFC 868
    says never to send a wrong time; no made-up time goes out at all)."""
    logger.error("%s: cannot read the clock: %r", format_address(client_address), exc)
