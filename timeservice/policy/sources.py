"""Who a source is and what it may get: the one place that decides both.

A source is a client's address (an IPv4-mapped IPv6 address counts as the
IPv4 one). An IPv6 address also belongs to its /64: a LAN is one /64, so its
hosts each get an address's share, but one host may hold a whole /64 and
take a new address for every request, so the /64 has a share of its own,
NETWORK_FACTOR times larger. SourceLimits decides what a datagram from a
source gets (an answer, nothing, or a Kiss-o'-Death); ConnectionLimits counts
the connections a stream server holds from each. Both only decide: the
transports act on the verdict. The clock and the random source are
arguments, so that a test can run hours of a client's life in a second and
a leak cannot make it flaky.
"""

from __future__ import annotations

import collections
import enum
import ipaddress
import math
import random
import time
from collections.abc import Callable

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
    """The IPv6 /64 a client shares a limit with; None for IPv4."""
    if ":" not in address[0]:
        return None
    host = ipaddress.IPv6Address(address[0].split("%")[0])
    if host.ipv4_mapped is not None:
        return None
    return str(ipaddress.IPv6Network((host, 64), strict=False))


def keys_of(address: tuple) -> tuple[str, ...]:
    """Every key a client counts under: its address, then its /64 if IPv6."""
    network = network_key(address)
    key = address_key(address)
    return (key,) if network is None else (key, network)


class Action(enum.Enum):
    """What a datagram gets: an answer, nothing, or a Kiss-o'-Death."""

    ANSWER = "answer"
    DROP = "drop"
    KISS = "kiss"


ANSWER, DROP, KISS = Action.ANSWER, Action.DROP, Action.KISS


class Record:
    """What the table knows of one source (an address or an IPv6 /64): its
    bucket, what it has had over its limit, and how fast it asks over it."""

    __slots__ = (
        "tokens",  # answers it may have now
        "seen",  # when tokens were last brought up to date
        "spare",  # what may still go out over its limit: leaks and kisses
        "spare_seen",
        "kissed",  # when it was last told to slow down
        "flood",  # its requests over the limit, a second (decaying average)
        "flood_seen",
        "addresses",  # an IPv6 /64's own addresses, each a Record
    )

    def __init__(self, tokens: float, spare: float, now: float) -> None:
        self.tokens, self.seen = tokens, now
        self.spare, self.spare_seen = spare, now
        self.kissed = -math.inf
        self.flood, self.flood_seen = 0.0, now
        self.addresses: collections.OrderedDict[str, Record] | None = None


class SourceLimits:
    """What each source may make a UDP server send, decided per datagram.

    - A bucket per source: `burst` answers at once, `rate` a second after
      (an IPv6 /64: NETWORK_FACTOR times both, decided first).
    - Over it, answers leak at random, as chrony's ``leak`` lets them: a
      forger who sends from a client's address cannot starve the client,
      because what goes out is spread at random over everything the address
      sends. While a source asks at most `flood_above` a second over its
      limit, `leak` a second of those are answered at random and the rest
      may get a Kiss-o'-Death, at most one per `kiss_interval` (for an IPv6
      address, its /64 too); beyond that it is flooding (forged, or deaf to
      kisses), gets no kiss, and each request is answered with the
      probability that spreads ``rate + spare_rate`` answers a second over
      all it sends.
    - What goes out over the limit, leaks and kisses alike, comes out of a
      second bucket of `spare_rate` a second (`spare_burst` at once): after
      its burst a source gets at most ``rate + spare_rate`` datagrams a
      second in all, and the whole server sends at most `kiss_rate` kisses
      a second.
    - The table remembers `sources` sources (an IPv6 /64, with up to
      `addresses_per_network` of its addresses, is one) and forgets the one
      heard from least recently to make room: a new source always gets a
      bucket of its own, so a flood of new sources locks no one out.

    Not thread-safe: one serving thread decides.
    """

    rate = 1.0
    burst = 16
    leak = 2.0
    spare_rate = 3.0
    spare_burst = 6.0
    flood_above = 3.0  # requests a second over the limit
    flood_time = 4.0  # seconds: how fast the flood estimate follows a source
    kiss_interval = 1.0
    kiss_rate = 16.0
    sources = 65536
    addresses_per_network = 16

    def __init__(
        self,
        rate: float | None = None,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random_source: Callable[[], float] = random.random,
        **settings: float,
    ) -> None:
        for name, value in settings.items():
            if not hasattr(SourceLimits, name) or name.startswith("_"):
                raise TypeError(f"unknown setting {name!r}")
            setattr(self, name, value)
        if rate is not None:
            self.rate = rate
        if burst is not None:
            self.burst = burst
        self.clock, self.random = clock, random_source
        self._table: collections.OrderedDict[str, Record] = collections.OrderedDict()
        self._kisses = (self.kiss_rate, clock())  # the whole server's kiss bucket
        self.leaked = 0  # answers given over the limit, for the metrics

    def __len__(self) -> int:
        """How many sources the table remembers now."""
        return len(self._table)

    def decide(self, address: tuple) -> Action:
        """What a datagram from `address` (as the kernel wrote it) gets."""
        host = address[0]
        now = self.clock()
        if ":" in host:
            return self._decide_ipv6(host, now)
        table = self._table
        record = table.get(host)
        if record is None:
            record = self._remember(table, host, self.burst, now, self.sources)
        else:
            table.move_to_end(host)
        tokens = record.tokens + (now - record.seen) * self.rate
        record.seen = now
        if tokens > self.burst:
            tokens = self.burst
        record.tokens = tokens
        if tokens >= 1 and record.flood <= self.flood_above:
            record.tokens = tokens - 1
            return ANSWER
        return self._over(record, None, self.rate, now)

    def _decide_ipv6(self, host: str, now: float) -> Action:
        """An IPv6 source: its /64 decides first, then the address, kept in
        the /64's own small table."""
        address = ipaddress.IPv6Address(host.split("%")[0])
        if address.ipv4_mapped is not None:
            return self.decide((str(address.ipv4_mapped),))
        factor = NETWORK_FACTOR
        network = self._bring_up(
            self._table, address.packed[:8].hex(), factor, now, self.sources
        )
        if network.tokens < 1 or network.flood > self.flood_above:
            return self._over(network, None, factor * self.rate, now)
        if network.addresses is None:
            network.addresses = collections.OrderedDict()
        record = self._bring_up(
            network.addresses, str(address), 1, now, self.addresses_per_network
        )
        if record.tokens >= 1 and record.flood <= self.flood_above:
            record.tokens -= 1
            network.tokens -= 1
            return ANSWER
        return self._over(record, network, self.rate, now)

    def _bring_up(
        self,
        table: collections.OrderedDict[str, Record],
        key: str,
        factor: int,
        now: float,
        most: int,
    ) -> Record:
        """The record of `key` in `table`, its bucket brought up to now."""
        record = table.get(key)
        if record is None:
            return self._remember(table, key, factor * self.burst, now, most)
        table.move_to_end(key)
        burst = factor * self.burst
        record.tokens = min(
            burst, record.tokens + (now - record.seen) * factor * self.rate
        )
        record.seen = now
        return record

    def _remember(
        self,
        table: collections.OrderedDict[str, Record],
        key: str,
        burst: int,
        now: float,
        most: int,
    ) -> Record:
        """A new source gets its own full bucket; the least recent goes if
        the table is full."""
        if len(table) >= most:
            table.popitem(last=False)
        record = table[key] = Record(float(burst), self.spare_burst, now)
        return record

    def _over(
        self, record: Record, network: Record | None, rate: float, now: float
    ) -> Action:
        """A request over `record`'s limit, or from a source that floods.
        `network` is an IPv6 address's /64, which has a token left."""
        flood_time = self.flood_time
        record.flood = (
            record.flood * math.exp((record.flood_seen - now) / flood_time)
            + 1 / flood_time
        )
        record.flood_seen = now
        spare = min(
            self.spare_burst,
            record.spare + (now - record.spare_seen) * self.spare_rate,
        )
        record.spare_seen = now
        verdict = DROP
        if record.flood > self.flood_above:  # at random, spread over all it sends
            if self.random() < (rate + self.spare_rate) / record.flood:
                if record.tokens >= 1:
                    record.tokens -= 1
                    verdict = ANSWER
                elif spare >= 1:
                    spare -= 1
                    verdict = ANSWER
                    self.leaked += 1
        elif record.tokens >= 1:  # a flood that has just ended
            record.tokens -= 1
            verdict = ANSWER
        elif spare >= 1 and self.random() < self.leak / record.flood:
            spare -= 1
            verdict = ANSWER
            self.leaked += 1
        elif spare >= 1 and self._may_kiss(record, network, now):
            spare -= 1
            verdict = KISS
        record.spare = spare
        if verdict is ANSWER and network is not None:
            network.tokens -= 1
        return verdict

    def _may_kiss(self, record: Record, network: Record | None, now: float) -> bool:
        """Whether a source may be told to slow down now; if so, counted."""
        interval = self.kiss_interval
        if now - record.kissed < interval:
            return False
        if network is not None and now - network.kissed < interval:
            return False  # a /64 has the kiss budget of one address
        tokens, then = self._kisses
        tokens = min(self.kiss_rate, tokens + (now - then) * self.kiss_rate)
        if tokens < 1:
            self._kisses = (tokens, now)
            return False
        self._kisses = (tokens - 1, now)
        record.kissed = now
        if network is not None:
            network.kissed = now
        return True


class ConnectionLimits:
    """How many connections a stream server holds: at most `most` in all,
    `per_host` from one address and `per_network` from one IPv6 /64 (None
    for no such limit). Not thread-safe: the server holds its lock."""

    def __init__(
        self, most: int, per_host: int | None, per_network: int | None
    ) -> None:
        self.most, self.per_host, self.per_network = most, per_host, per_network
        self.open = 0
        self._per_key: dict[str, int] = {}

    def keys(self, address: tuple) -> tuple[str, ...]:
        """The keys a connection from `address` counts under."""
        if self.per_host is None and self.per_network is None:
            return ()
        return keys_of(address)

    def refusal(self, keys: tuple[str, ...]) -> str | None:
        """Why one more connection under `keys` would be too many, or None."""
        if self.open >= self.most:
            return "busy"
        for index, key in enumerate(keys):
            limit = self.per_host if index == 0 else self.per_network
            if limit is not None and self._per_key.get(key, 0) >= limit:
                return "per_host" if index == 0 else "per_network"
        return None

    def add(self, keys: tuple[str, ...]) -> None:
        """Count one more connection under `keys`."""
        self.open += 1
        for key in keys:
            self._per_key[key] = self._per_key.get(key, 0) + 1

    def remove(self, keys: tuple[str, ...]) -> None:
        """Count one connection under `keys` closed."""
        self.open -= 1
        for key in keys:
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]
