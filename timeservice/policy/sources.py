"""What a source may get: the one place that decides it, for datagrams
(SourceLimits) and for connections (ConnectionLimits). Who a source is
comes from wire.addresses.source_of(), which every part that decides by
source asks.

A source is a client's address; an IPv6 address also belongs to its /64,
which one host may hold whole. The /64 is a key of the tables, so that a
host rotating through its addresses fills one entry and not the table; it
is not one budget, so that the other hosts of a LAN keep their own answers
while one of them floods. Both classes only decide: the transports act on
the verdict. The clock and the random source are arguments, so that a test
can run hours of a client's life in a second and a leak cannot make it
flaky.
"""

from __future__ import annotations

import collections
import enum
import random
import time
from collections.abc import Callable

from ..wire.addresses import source_of

NETWORK_FACTOR = 4  # an IPv6 /64 may hold this many times one address's connections

# What one entry of SourceLimits' table costs, in bytes, at most: an IPv4
# source, an IPv6 /64 or one address in it, with its key, its number and
# its place in the table (measured with tracemalloc by the tests: about 190
# bytes for an IPv4 source, 140 for an IPv6 one, on CPython 3.11; rounded up).
RECORD_BYTES = 256

TABLE_BYTES = 16 * 2**20  # the table's bound; chrony's clientloglimit is 512 KB

RATE = 1.0  # replies a second per source, after its burst
BURST = 16  # replies a source may have at once: ntpdig's, chronyd -Q's iburst


class Action(enum.Enum):
    """What a datagram gets: an answer, nothing, or a Kiss-o'-Death."""

    ANSWER = "answer"
    DROP = "drop"
    KISS = "kiss"


ANSWER, DROP, KISS = Action.ANSWER, Action.DROP, Action.KISS


class Network:
    """An IPv6 /64 in the table: the buckets of up to `addresses_per_network`
    of its addresses, and the bucket that those without one share."""

    __slots__ = ("addresses", "shared")

    def __init__(self, now: float) -> None:
        self.addresses: dict[str, float] = {}
        self.shared = now


class SourceLimits:
    """What each source may make a UDP server send, decided per datagram.

    - A bucket per source: `burst` answers at once, `rate` a second after.
      A bucket is one number, the time it will be full again (the generic
      cell rate algorithm), and a full bucket is as good as none: the table
      forgets such sources first and loses nothing.
    - Over its limit, a request is answered at random with probability
      `leak`, as chrony's ``leak`` answers (its default, 2, is 1 in 4): what
      an address gets is a share of what it sends, never more than it sent,
      so a forger who sends from a client's address cannot starve the client
      at any rate. The whole server answers at most `leak_rate` such
      requests a second, so a flood of forged requests makes it send a
      bounded amount, and costs the sources within their limits nothing.
    - A Kiss-o'-Death only where `kiss` asks for it, as chrony sends one
      only with ``kod``: at most one per `kiss_interval` to an address (and
      to an IPv6 /64), and `kiss_rate` a second from the whole server. A
      forger can draw them onto the client whose address he sends from.
    - An IPv6 /64 is one entry of the table, with the buckets of up to
      `addresses_per_network` of its addresses: a new address takes the
      place of one whose bucket is full again, or, if there is none, shares
      the /64's bucket. So the hosts of a LAN each keep their own answers
      while one floods, and a /64 gets at most that many addresses' answers
      and the shared bucket's, however many addresses it rotates through.
    - The table holds at most `table_bytes` (RECORD_BYTES an entry, the
      /64's addresses counted each) and forgets the source heard from least
      recently to make room: a new source always gets a bucket of its own.
    - What NTP's interleaved mode (RFC 9769) needs of a source is kept in
      its entry too, so that the same bound holds it: the receive
      timestamps of up to `stamps_per_source` of its latest replies, each
      with the kernel's transmit time of that reply once it is known
      (remember(), transmitted(), transmit_for()), each pair counted as an
      entry. With `limiting` off, every datagram is answered and the table
      remembers only that.

    Not thread-safe: one serving thread decides.
    """

    rate = RATE
    burst = BURST
    leak = 0.25
    leak_rate = 1024.0  # answers a second over the limits, for the whole server
    kiss = False
    kiss_interval = 1.0
    kiss_rate = 16.0
    table_bytes = TABLE_BYTES
    addresses_per_network = 16
    limiting = True  # False: no limit, the table for interleaved mode alone
    stamps_per_source = 4  # interleaved replies a source (a NAT, a /64) may follow

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
        # A bucket refills one answer in `interval` seconds and holds
        # `burst`: a request is over the limit when the bucket would be full
        # only more than `tolerance` seconds from now.
        self.configure()
        self.max_records = max(2, int(self.table_bytes // RECORD_BYTES))
        self.records = 0  # entries in the table, a /64's addresses each counted
        self._table: collections.OrderedDict[str, float | Network] = (
            collections.OrderedDict()
        )
        self._leaks = (self.leak_rate, clock())  # the whole server's leak bucket
        self._kisses = (self.kiss_rate, clock())  # and its kiss bucket
        self._kissed: collections.OrderedDict[str, float] = collections.OrderedDict()
        # By the table's key: receive and transmit times, flat (0: not known yet).
        self._stamps: dict[str, list[int]] = {}
        self.leaked = 0  # answers given over the limit, for the metrics

    def configure(
        self,
        *,
        rate: float | None = None,
        burst: int | None = None,
        kiss: bool | None = None,
        limiting: bool | None = None,
    ) -> None:
        """New figures, for the sources the table knows too (a reload)."""
        if rate is not None:
            self.rate = rate
        if burst is not None:
            self.burst = burst
        if kiss is not None:
            self.kiss = kiss
        if limiting is not None:
            self.limiting = limiting
        self._interval = 1 / self.rate if self.rate > 0 else 1e12
        self._tolerance = (self.burst - 1) * self._interval

    def __len__(self) -> int:
        """How many sources the table remembers now (an IPv6 /64 is one)."""
        return len(self._table)

    def decide(self, address: tuple) -> Action:
        """What a datagram from `address` (as the kernel wrote it) gets."""
        key = address[0]  # an IPv4 address is its own key (source_of())
        clock = self.clock  # read, then called: no method lookup on each datagram
        now = clock()
        if ":" in key:
            source = source_of(key)
            if source.network is not None:
                return self._decide_ipv6(source.key, source.network, now)
            key = source.key
        table = self._table
        # Taken out and put back last: the most recently heard from.
        full_at: float | None = table.pop(key, None)  # type: ignore[assignment]
        if full_at is None:  # an address's entry is when its bucket is full
            self._make_room()
            full_at = now
            self.records += 1
        # _take(), written out: every datagram of a limited server comes here.
        start = full_at if full_at > now else now
        if start - now > self._tolerance:
            table[key] = full_at
            return self._over(key, now)
        table[key] = start + self._interval
        return ANSWER

    def _decide_ipv6(self, key: str, prefix: str, now: float) -> Action:
        """An IPv6 source: its /64's entry, and its own bucket in it if it
        has or can have one, else the /64's shared bucket."""
        table = self._table
        network = table.get(prefix)
        if network is None:
            self._make_room()
            network = table[prefix] = Network(now)
            self.records += 1
        else:
            table.move_to_end(prefix)
        assert isinstance(network, Network)
        addresses = network.addresses
        full_at = addresses.get(key)
        if full_at is None:
            if len(addresses) >= self.addresses_per_network and not self._forget_full(
                addresses, now
            ):
                taken = self._take(network.shared, now)
                if taken is None:
                    return self._over(prefix, now)
                network.shared = taken
                return ANSWER
            self._make_room()
            full_at = addresses[key] = now
            self.records += 1
        taken = self._take(full_at, now)
        if taken is None:
            return self._over(prefix, now)
        addresses[key] = taken
        return ANSWER

    def _take(self, full_at: float, now: float) -> float | None:
        """One answer from a bucket that is full at `full_at`: when it will be
        full after it, or None if it has none to give (it stays as it was)."""
        if full_at < now:
            full_at = now
        if full_at - now > self._tolerance:
            return None
        return full_at + self._interval

    def _forget_full(self, addresses: dict[str, float], now: float) -> bool:
        """Forget one address whose bucket is full again; False if none is."""
        for key, full_at in addresses.items():
            if full_at <= now:
                del addresses[key]
                self.records -= 1
                return True
        return False

    def _make_room(self) -> None:
        """Forget the sources heard from least recently until one more entry
        fits; never the one just heard from, which is last."""
        table = self._table
        while self.records >= self.max_records and len(table) > 1:
            key, forgotten = table.popitem(last=False)
            self.records -= (
                1 + len(forgotten.addresses) if isinstance(forgotten, Network) else 1
            )
            stamps = self._stamps.pop(key, None)
            if stamps is not None:
                self.records -= len(stamps) // 2

    def remember(self, address: tuple, receive: int) -> None:
        """Keep `receive`, the receive timestamp of a reply to `address` (as
        the reply carries it), for the interleaved answer to the source's
        next request; its oldest gives way past `stamps_per_source`."""
        key = self._entry(address)
        stamps = self._stamps.setdefault(key, [])
        if len(stamps) >= 2 * self.stamps_per_source:
            del stamps[:2]
        else:
            self._make_room()
            self.records += 1
        stamps += (receive, 0)

    def transmitted(self, address: tuple, receive: int, transmit_ns: int) -> None:
        """The kernel's transmit time of the reply whose receive timestamp
        was `receive`, if the table still keeps it."""
        stamps = self._stamps.get(self._key(address))
        if stamps is None:
            return
        for index in range(0, len(stamps), 2):
            if stamps[index] == receive:
                stamps[index + 1] = transmit_ns
                return

    def transmit_for(self, address: tuple, origin: int) -> int | None:
        """The transmit time of the reply to `address` whose receive
        timestamp was `origin`, forgotten as it is given (one interleaved
        answer for each); None if the table has none (never kept, forgotten,
        or its transmit time never came)."""
        key = self._key(address)
        stamps = self._stamps.get(key)
        if stamps is None:
            return None
        for index in range(0, len(stamps), 2):
            if stamps[index] == origin:
                transmit = stamps[index + 1]
                del stamps[index : index + 2]
                self.records -= 1
                if not stamps:
                    del self._stamps[key]
                return transmit or None
        return None

    def _key(self, address: tuple) -> str:
        """The table's key for `address`: its own, or its IPv6 /64's."""
        source = source_of(address[0])
        return source.network or source.key

    def _entry(self, address: tuple) -> str:
        """The key of `address`'s entry, made (a full bucket) if the table
        has none, and made the most recently heard from."""
        source = source_of(address[0])
        key = source.network or source.key
        table = self._table
        if key in table:
            table.move_to_end(key)
        else:
            self._make_room()
            table[key] = Network(self.clock()) if source.network else self.clock()
            self.records += 1
        return key

    def _over(self, key: str, now: float) -> Action:
        """A request over its source's limit: a leak at random, a kiss where
        asked for, or nothing. `key` is who a kiss is counted against."""
        if self.leak > 0 and self.random() < self.leak:
            tokens, then = self._leaks
            tokens = min(self.leak_rate, tokens + (now - then) * self.leak_rate)
            if tokens >= 1:
                self._leaks = (tokens - 1, now)
                self.leaked += 1
                return ANSWER
            self._leaks = (tokens, now)
        if self.kiss and self._may_kiss(key, now):
            return KISS
        return DROP

    def may_nak(self, address: tuple) -> bool:
        """Whether an NTS NAK may go to `address` now, within the bounds a
        Kiss-o'-Death has (a NAK is one, however kisses are set); if so,
        counted."""
        source = source_of(address[0])
        return self._may_kiss(source.network or source.key, self.clock())

    def _may_kiss(self, key: str, now: float) -> bool:
        """Whether `key` may be told to slow down now; if so, counted."""
        kissed = self._kissed
        while kissed:  # those told long enough ago are forgotten, oldest first
            oldest, when = next(iter(kissed.items()))
            if now - when < self.kiss_interval:
                break
            del kissed[oldest]
        if key in kissed:
            return False
        tokens, then = self._kisses
        tokens = min(self.kiss_rate, tokens + (now - then) * self.kiss_rate)
        if tokens < 1:
            self._kisses = (tokens, now)
            return False
        self._kisses = (tokens - 1, now)
        kissed[key] = now
        return True
