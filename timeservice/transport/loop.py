"""What a serving loop does besides serving: it counts its turns, so that a
watcher can tell a loop that turns from one that hangs, and logs what goes
wrong with a request in one way for each kind of transport."""

from __future__ import annotations

import contextlib
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
    and handle_error(): an error of the client's making (`ordinary`: a
    reset, a timeout) is one line at debug level; anything else is a fault
    of this server's, logged at error level, with its traceback where
    `traceback_on_fault` (a connection's fault is worth one; a datagram's,
    which anyone can send by the thousand, is one line). Never printed."""

    ordinary: tuple[type[BaseException], ...] = (OSError,)
    traceback_on_fault = True
    turns = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stop_asked = False
        self._loop_ended = threading.Event()
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """socketserver's loop, waiting on a poll object of its own rather
        than a selectors one (whose select() is Python, and a datagram's
        answer costs little more): wait, serve what is ready, then
        service_actions(), until shutdown()."""
        self._loop_ended.clear()  # a shutdown() asked before this one starts holds
        try:
            with waiting(self, poll_interval) as wait:
                while not self._stop_asked:
                    ready = wait()
                    if self._stop_asked:
                        break
                    if ready:
                        self._handle_request_noblock()  # type: ignore[attr-defined]
                    self.service_actions()
        finally:
            self._stop_asked = False
            self._loop_ended.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it has, as socketserver's
        shutdown() does (from another thread: in the loop's, it waits
        forever)."""
        self._stop_asked = True
        self._loop_ended.wait()

    def service_actions(self) -> None:
        self.turns += 1
        super().service_actions()

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
def waiting(server: Any, timeout: float | None) -> Iterator[Callable[[], list]]:
    """A call that waits until `server`'s socket is ready or `timeout`
    seconds pass (None: until ready): poll() where the platform has it,
    else a selector, closed when the loop ends."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(server, select.POLLIN)
        milliseconds = None if timeout is None else timeout * 1000
        yield lambda: poller.poll(milliseconds)
        return
    with selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        yield lambda: selector.select(timeout)


def clock_failed(client_address: Any, exc: Exception) -> None:
    """One line for a clock that failed a handler: nothing goes out (RFC 868
    says never to send a wrong time; no made-up time goes out at all)."""
    logger.error("%s: cannot read the clock: %r", format_address(client_address), exc)
