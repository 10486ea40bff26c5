"""Who may ask, and how refusals are logged: pure code, no sockets.

An access list decides as chrony's ``allow`` and ``deny`` do: the most
specific subnet that holds the address wins. A flood of refused clients is
logged as a count per interval with a few examples, so that an attack
cannot fill the log.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable

logger = logging.getLogger("timeservice.server")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


NETWORK_FACTOR = 4  # an IPv6 /64 may have this many times one address's share


def address_key(address: tuple) -> str:
    """Who a client is: its address as the kernel wrote it, an IPv4-mapped
    IPv6 address as the IPv4 one, without an IPv6 scope."""
    if ":" not in address[0]:  # IPv4 as the kernel wrote it: no parsing needed
        return address[0]
    host = ipaddress.IPv6Address(address[0].split("%")[0])
    if host.ipv4_mapped is not None:
        return str(host.ipv4_mapped)
    return str(host)


def network_key(address: tuple) -> str | None:
    """The network a client shares a limit with: its IPv6 /64; None for IPv4.

    A LAN is one /64, so its hosts must not share one address's limit; but
    one host may hold a whole /64 and pick a new address for every request,
    so the /64 has a limit of its own too, NETWORK_FACTOR times larger.
    """
    if ":" not in address[0]:
        return None
    host = ipaddress.IPv6Address(address[0].split("%")[0])
    if host.ipv4_mapped is not None:
        return None
    return str(ipaddress.IPv6Network((host, 64), strict=False))


def parse_subnet(text: str) -> Network:
    """``ADDRESS`` or ``ADDRESS/PREFIX``, IPv4 or IPv6; host bits are ignored."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 subnet: {text!r}") from None


class AccessList:
    """Allowed and denied subnets; the most specific subnet holding an address wins.

    For the same subnet given twice, the later rule wins. An address no
    subnet holds is denied if any subnet is allowed (``allow`` on its own
    means "only these"), and allowed otherwise. Answers are remembered for
    the last `remembered` addresses: parsing one costs microseconds.
    """

    remembered = 4096

    def __init__(self, rules: Iterable[tuple[Network, bool]]) -> None:
        latest: dict[Network, bool] = {}
        for network, allowed in rules:
            latest.pop(network, None)
            latest[network] = allowed
        # Most specific first; a stable sort keeps the given order otherwise.
        self.rules = sorted(latest.items(), key=lambda rule: -rule[0].prefixlen)
        self.default = not any(allowed for _, allowed in self.rules)
        self._answers: dict[str, bool] = {}

    @classmethod
    def from_options(cls, allow: Iterable[str], deny: Iterable[str]) -> AccessList:
        """The list that ``--allow`` and ``--deny`` give, allows before denies.

        Only the same subnet in both could depend on the order: then the
        deny wins, as the safer reading.
        """
        return cls(
            [(parse_subnet(text), True) for text in allow]
            + [(parse_subnet(text), False) for text in deny]
        )

    def allows(self, host: str) -> bool:
        """Whether the client at `host` (as the kernel wrote it) may ask."""
        answer = self._answers.get(host)
        if answer is None:
            if len(self._answers) >= self.remembered:
                self._answers.clear()  # simpler than an LRU, and as bounded
            answer = self._answers[host] = self._decide(host)
        return answer

    def _decide(self, host: str) -> bool:
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network, allowed in self.rules:
            if address in network:
                return allowed
        return self.default


# What a cause of refusal means, for the log; "busy" is a capacity problem.
CAUSES = {
    "busy": "the server is at its connection limit",
    "per_host": "too many connections from this host",
    "per_network": "too many connections from this IPv6 /64",
    "denied": "not allowed by the access list",
    "rate_limited": "over its rate limit",
    "low_source_port": "source port 0, or below 1024 for Daytime and Time",
    "loop": "from a UDP port this process serves, on this host (a loop)",
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
        self._windows: dict[str, tuple[float, int, list[str]]] = {}

    def note(self, cause: str, who: str, now: float | None = None) -> None:
        """Log or count one refused client."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._windows.get(cause)
            if window is not None and now - window[0] < self.interval:
                start, count, examples = window
                if len(examples) < self.examples and who not in examples:
                    examples.append(who)
                self._windows[cause] = (start, count + 1, examples)
                return
            self._summarise(cause, now)
            self._windows[cause] = (now, 0, [])
        level = logging.WARNING if cause in WARNINGS else logging.INFO
        logger.log(level, "%s: refused, %s", who, CAUSES.get(cause, cause))

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the counts of the intervals that are over (every one if `force`)."""
        if not self._windows:  # the usual case, called on every request
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            for cause, (start, _, _) in list(self._windows.items()):
                if force or now - start >= self.interval:
                    self._summarise(cause, now)
                    del self._windows[cause]

    def _summarise(self, cause: str, now: float) -> None:
        window = self._windows.get(cause)
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
        self._shown = self._more = 0

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
                self._more += 1
        if show:
            logger.log(self.level, message, *args)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Log the count of a window that is over (any, if `force`)."""
        if not self._more:  # the usual case
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            if force or now - self._start >= self.interval:
                self._summarise(now)

    def _summarise(self, now: float) -> None:
        if self._more:
            seconds = min(now - self._start, self.interval)
            logger.log(
                self.level, "%d more %s in %.0f s", self._more, self.what, seconds
            )
            self._more = 0
