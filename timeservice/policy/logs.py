"""Logs an attack cannot flood: refusals logged once per cause and then
counted, and other lines (the connections closed) up to a number a minute;
and how the logs name a client."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)


def format_address(address: tuple) -> str:
    """``HOST port PORT``, as http.server shows an address."""
    return f"{address[0]} port {address[1]}"


# What a cause of refusal means, for the log; "busy" is a capacity problem.
CAUSES = {
    "busy": "the server is at its connection limit",
    "per_host": "too many connections from this host",
    "per_network": "too many connections from this IPv6 /64",
    "denied": "not allowed by the access list",
    "rate_limited": "over its rate limit",
    "low_source_port": "source port 0, or below 1024 for Daytime and Time",
    "loop": "a Daytime or Time reply, which answering could start a loop",
    "not_unicast": "sent to a broadcast or multicast address",
    "handshake": "its NTS-KE handshake failed (TLS)",
    "ke_request": "its NTS-KE request was not one",
    "ke_timeout": "its NTS-KE exchange took too long",
}


WARNINGS = {"busy", "per_host", "per_network"}


class RefusalLog:
    """Logs refused clients in a few lines however many there are.

    The first refusal of each cause is logged at once; the others within
    `interval` seconds are counted, and flush() then logs one line with the
    count and a few of their addresses. Thread-safe.
    """

    def __init__(self, interval: float = 60.0, examples: int = 3) -> None:
        self.interval, self.examples = interval, examples
        self._lock = threading.Lock()
        # The windows open, by cause: while any is, flush() has work.
        self.waiting: dict[str, tuple[float, int, list[str]]] = {}

    def note(self, cause: str, who: str, now: float | None = None) -> None:
        """Log or count one refused client."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self.waiting.get(cause)
            if window is not None and now - window[0] < self.interval:
                start, count, examples = window
                if len(examples) < self.examples and who not in examples:
                    examples.append(who)
                self.waiting[cause] = (start, count + 1, examples)
                return
            self._summarise(cause, now)
            self.waiting[cause] = (now, 0, [])
        level = logging.WARNING if cause in WARNINGS else logging.INFO
        logger.log(level, "%s: refused, %s", who, CAUSES.get(cause, cause))

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the counts of the intervals that are over (every one if `force`)."""
        if not self.waiting:  # the usual case, called on every request
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            for cause, (start, _, _) in list(self.waiting.items()):
                if force or now - start >= self.interval:
                    self._summarise(cause, now)
                    del self.waiting[cause]

    def _summarise(self, cause: str, now: float) -> None:
        window = self.waiting.get(cause)
        if window is None or not window[1]:
            return
        start, count, examples = window
        level = logging.WARNING if cause in WARNINGS else logging.INFO
        logger.log(
            level,
            "refused %d more client(s) in %.0f s, %s; e.g. %s",
            count,
            min(now - start, self.interval),
            CAUSES.get(cause, cause),
            ", ".join(examples),
        )


class BoundedLog:
    """Logs at most `most` lines in `interval` seconds; the rest are counted,
    and one line then says how many, so that a flood of accepted clients
    cannot flood the log either. Thread-safe."""

    def __init__(
        self,
        what: str,
        most: int = 20,
        interval: float = 60.0,
        level: int = logging.INFO,
    ) -> None:
        self.what, self.most, self.interval, self.level = what, most, interval, level
        self._lock = threading.Lock()
        self._start = -interval  # the window's start
        self._shown = 0
        self.waiting = 0  # lines counted and not shown: while any are, flush() has work

    def note(self, message: str, *args: object, now: float | None = None) -> None:
        """Log one line, or count it past the window's `most`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._start >= self.interval:
                self._summarise(now)
                self._start, self._shown = now, 0
            show = self._shown < self.most
            if show:
                self._shown += 1
            else:
                self.waiting += 1
        if show:
            logger.log(self.level, message, *args)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the count of a window that is over (any, if `force`)."""
        if not self.waiting:  # the usual case
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            if force or now - self._start >= self.interval:
                self._summarise(now)

    def _summarise(self, now: float) -> None:
        if self.waiting:
            seconds = min(now - self._start, self.interval)
            logger.log(
                self.level, "%d more %s in %.0f s", self.waiting, self.what, seconds
            )
            self.waiting = 0
