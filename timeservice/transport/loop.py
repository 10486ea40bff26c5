"""What a serving loop does besides serving: it counts its turns, so that a
watcher can tell a loop that turns from one that hangs, and logs what goes
wrong with a request in one way for each kind of transport."""

from __future__ import annotations

import logging
import socketserver
import sys
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


def clock_failed(client_address: Any, exc: Exception) -> None:
    """One line for a clock that failed a handler: nothing goes out (RFC 868
    says never to send a wrong time; no made-up time goes out at all)."""
    logger.error("%s: cannot read the clock: %r", format_address(client_address), exc)
