"""How much a source may make a UDP server send: a token bucket per source,
one shared by the sources there is no room for, and the Kiss-o'-Death
budget. Pure: time is passed in."""

from __future__ import annotations

import collections


class RateLimiter:
    """A token bucket per source: `burst` replies at once, `rate` per second after.

    At most `sources` are remembered. A source not heard from for `forget`
    seconds may make room for a new one; while every remembered source is
    in use, the sources it has no room for share one bucket (`rate` times
    `burst` per second, `burst` at once) instead of each earning a fresh
    burst. So a flood of new sources can neither push out the clients the
    server knew before it nor make the server send more than that bucket.

    A source over its limit may be told so (NTP's Kiss-o'-Death) at most
    once per `kiss_interval` seconds, and all sources together at most
    `kiss_rate` times a second: a forger who spoofs a victim's address
    makes the server send the victim no more than that.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        sources: int = 65536,
        forget: float = 64.0,
        kiss_interval: float = 1.0,
        kiss_rate: float = 16.0,
    ) -> None:
        self.rate, self.burst, self.sources, self.forget = rate, burst, sources, forget
        self.kiss_interval = kiss_interval
        # A source's tokens, when it was last heard from, when it was last kissed.
        self._buckets: collections.OrderedDict[str, tuple[float, float, float]] = (
            collections.OrderedDict()
        )
        self._shared = (float(burst), 0.0)  # tokens, last heard from
        self._shared_rate = rate * burst
        self._kisses = (kiss_rate, 0.0)  # the whole server's Kiss-o'-Death bucket
        self._kiss_rate = kiss_rate

    def allow(self, key: str, now: float) -> bool:
        """Take a token for `key` if it has one."""
        entry = self._buckets.pop(key, None)
        if entry is None:
            if len(self._buckets) >= self.sources:
                oldest, (_, heard, _) = next(iter(self._buckets.items()))
                if now - heard < self.forget:  # every source in use: no room
                    return self._take_shared(now)
                del self._buckets[oldest]
            entry = (self.burst, now, -self.kiss_interval)
        tokens, then, kissed = entry
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now, kissed)
        return allowed

    def _take_shared(self, now: float) -> bool:
        tokens, then = self._shared
        tokens = min(self.burst, tokens + (now - then) * self._shared_rate)
        allowed = tokens >= 1
        self._shared = (tokens - 1 if allowed else tokens, now)
        return allowed

    def kiss(self, key: str, now: float) -> bool:
        """Whether `key`, just over its limit, may be told so now; if so, counted."""
        entry = self._buckets.get(key)
        if entry is None or now - entry[2] < self.kiss_interval:
            return False  # a shared source, or one told too recently
        tokens, then = self._kisses
        tokens = min(self._kiss_rate, tokens + (now - then) * self._kiss_rate)
        if tokens < 1:
            self._kisses = (tokens, now)
            return False
        self._kisses = (tokens - 1, now)
        self._buckets[key] = (entry[0], entry[1], now)
        return True
