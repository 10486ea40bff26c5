"""What a source may get, by hand: the policy's own clock and random source
are the test's, so hours of a client's life run in a second and every leak
is the same on every run."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from timeservice.policy.connections import ConnectionLimits
from timeservice.policy.sources import (
    ANSWER,
    DROP,
    KISS,
    RECORD_BYTES,
    SourceLimits,
)
from timeservice.wire.addresses import source_of


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(**settings) -> tuple[SourceLimits, Clock]:
    clock = Clock()
    chance = random.Random(27)
    return SourceLimits(clock=clock, random_source=chance.random, **settings), clock


def v4(n: int) -> tuple[str, int]:
    """The n-th of many IPv4 sources, as the kernel writes them."""
    return (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000)


def v6(network: int, host: int) -> tuple:
    return (f"2001:db8:{network:x}::{host:x}", 123, 0, 0)


def test_a_source_has_its_burst_then_its_rate():
    policy, clock = limits(rate=2.0, burst=3, leak=0.0)
    assert [policy.decide(v4(1)) for _ in range(3)] == [ANSWER] * 3
    assert policy.decide(("::ffff:10.0.0.1", 1, 0, 0)) is DROP  # the same source
    assert policy.decide(v4(2)) is ANSWER  # another source, its own bucket
    clock.now += 0.5  # one answer back at 2 a second
    assert policy.decide(v4(1)) is ANSWER
    assert policy.decide(v4(1)) is DROP
    clock.now += 10  # never more than the burst, however long it waited
    assert [policy.decide(v4(1)) for _ in range(4)] == [ANSWER] * 3 + [DROP]


def test_an_unknown_setting_is_an_error():
    with pytest.raises(TypeError, match="unknown setting 'bursts'"):
        SourceLimits(bursts=3)


# A table of bounded size, which locks no one out


def flood(policy: SourceLimits, clock: Clock, count: int, per_second: float, first=0):
    """`count` new sources, one datagram each, `per_second` of them a second."""
    for n in range(first, first + count):
        clock.now += 1 / per_second
        policy.decide(v4(n))


def test_the_table_holds_what_its_bytes_allow():
    policy, clock = limits(table_bytes=RECORD_BYTES * 1000)
    flood(policy, clock, 5000, per_second=5000)
    assert policy.records == len(policy) == 1000
    for network in range(100):  # IPv6: each /64 and each of its addresses count
        for host in range(1, 21):
            policy.decide(v6(network, host))
    assert policy.records <= 1000


@pytest.mark.parametrize("kind", ["ipv4", "ipv6"])
def test_an_entry_of_the_table_costs_at_most_record_bytes(kind):
    """Measured, not assumed: the table's memory at its bound, per entry, as
    tracemalloc sees it (the keys, the numbers, the table's own slots)."""
    policy, clock = limits(table_bytes=RECORD_BYTES * 5_000)
    for n in range(100):  # the interpreter's first allocations are not the table's
        policy.decide(v4(10**6 + n))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(10_000):
            clock.now += 0.0001
            if kind == "ipv4":
                policy.decide(v4(n))
            else:  # whole /64s of 16 addresses each: the most a /64 holds
                policy.decide(v6(n // 16, n % 16 + 1))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert policy.records <= 5_000
    print(f"{kind}: {used / policy.records:.0f} bytes an entry")
    assert used <= policy.table_bytes


def test_new_clients_get_their_own_bucket_once_a_flood_fills_the_table():
    policy, clock = limits(table_bytes=RECORD_BYTES * 65_536)
    known = ("192.0.2.1", 123)
    assert policy.decide(known) is ANSWER
    flood(policy, clock, 70_000, per_second=70_000)
    assert policy.records == policy.max_records  # full
    # 50 new IPv4 clients: 2.0.0 answered none of them.
    assert all(policy.decide((f"198.51.100.{n}", 123)) is ANSWER for n in range(50))
    answered = {"known": 0, "new": 0}
    for second in range(8):  # then 2,000 new sources a second, and each asks
        flood(policy, clock, 2000, per_second=2000, first=100_000 + 2000 * second)
        answered["known"] += policy.decide(known) is ANSWER
        answered["new"] += policy.decide(("203.0.113.9", 123)) is ANSWER
    assert answered == {"known": 8, "new": 8}
    assert policy.records == policy.max_records  # bounded, however many came


def test_a_client_asking_every_1024_s_is_answered_during_a_flood():
    policy, clock = limits(table_bytes=RECORD_BYTES * 65_536)
    client = ("192.0.2.77", 123)
    answered = []
    for poll in range(8):  # over two hours of the client's life
        clock.now += 1024 - 35
        # The 35 s before each poll: 2,000 new sources a second, more than
        # the table holds, so the client was forgotten long ago.
        flood(policy, clock, 70_000, per_second=2000, first=70_000 * poll)
        answered.append(policy.decide(client))
    assert answered == [ANSWER] * 8


# A forger cannot starve a client; what goes out is a share of what came


def forged(policy: SourceLimits, clock: Clock, rate: float, seconds: int, seed=1):
    """A client asking once a second while `rate` datagrams a second come
    forged from its address; what each of them got."""
    order = random.Random(seed)
    got: dict[str, list] = {"client": [], "forged": []}
    for _ in range(seconds):
        start = clock.now
        times = sorted((start + order.random(), "forged") for _ in range(int(rate)))
        times.append((start + order.random(), "client"))
        for moment, who in sorted(times):
            clock.now = moment
            got[who].append(policy.decide(("192.0.2.5", 123)))
        clock.now = start + 1
    return got


@pytest.mark.parametrize("rate", [2, 20, 200, 2000])
def test_a_forger_at_any_rate_leaves_the_client_its_share(rate):
    policy, clock = limits()
    seconds = 600 if rate < 2000 else 300
    got = forged(policy, clock, rate, seconds)
    share = got["client"].count(ANSWER) / seconds
    sent = sum(v is not DROP for who in got.values() for v in who)
    received = sum(len(who) for who in got.values())
    print(f"{rate}/s forged: client answered {share:.3f}, sent {sent / received:.3f}")
    assert sent <= received  # never more than the address sent
    assert sent <= policy.burst + seconds * (1 + min(rate / 4, policy.leak_rate) * 1.1)
    # The client's share: its own rate, and 1 in 4 of the rest, until the
    # whole server's leak budget (1,024 a second) is what bounds it.
    expected = min(policy.leak, policy.leak_rate / (rate + 1))
    assert share >= expected * 0.7
    if rate <= 200:
        assert share >= 1 / 8
    assert KISS not in got["client"]  # no kisses unless asked for


def test_the_whole_server_leaks_at_most_its_leak_rate():
    policy, clock = limits(burst=1, rate=0.0, leak=1.0, leak_rate=50.0)
    leaked = 0
    for second in range(10):
        for n in range(1000):  # 1,000 sources, each over its limit
            clock.now = 2000 + second + n / 1000
            leaked += policy.decide(v4(n)) is ANSWER
    assert leaked <= 1000 + 50 * 10 + 50  # their first answers, then the budget
    assert policy.leaked <= 50 * 10 + 50


def test_kisses_only_where_asked_for_once_a_second_and_16_in_all():
    quiet, clock = limits(burst=1, rate=0.0, leak=0.0)
    assert [quiet.decide(v4(1)) for _ in range(3)] == [ANSWER, DROP, DROP]
    policy, clock = limits(burst=1, rate=0.0, leak=0.0, kiss=True)
    assert policy.decide(v4(1)) is ANSWER
    assert policy.decide(v4(1)) is KISS
    clock.now += 0.5
    assert policy.decide(v4(1)) is DROP  # told a moment ago
    clock.now += 0.5
    assert policy.decide(v4(1)) is KISS
    kisses = 0
    for second in range(10):
        for n in range(200):  # each source a little over: 2 a second
            clock.now = 2000 + second + n / 200
            for _ in range(2):
                kisses += policy.decide(v4(n)) is KISS
    assert kisses <= 16 * 10 + 16


def test_over_the_limit_answers_leak_at_random_and_are_counted():
    policy, _ = limits(burst=1, rate=0.0, leak=0.5, leak_rate=1e6)
    got = [policy.decide(v4(1)) for _ in range(1001)]
    assert got[0] is ANSWER
    leaked = got[1:].count(ANSWER)
    assert leaked == policy.leaked and 400 < leaked < 600


# IPv6: the /64 is one entry, not one budget


def test_the_hosts_of_one_ipv6_lan_each_get_their_own_share():
    policy, _ = limits(rate=0.0, leak=0.0)
    answered = sum(
        policy.decide(v6(1, host)) is ANSWER for host in range(1, 17) for _ in range(16)
    )
    assert answered == 16 * 16  # each its own bucket
    assert len(policy) == 1  # one entry of the table


def test_a_neighbour_keeps_its_answers_while_its_slash_64_floods():
    policy, clock = limits()
    flooders = [v6(1, host) for host in range(1, 5)]
    neighbour = v6(1, 99)
    answered = 0
    for second in range(8):
        for n in range(100):  # 100 a second from 4 addresses
            clock.now = 3000 + second + n / 100
            policy.decide(flooders[n % 4])
        answered += policy.decide(neighbour) is ANSWER
    assert answered == 8  # 2.0.0's shared /64 budget: 1 in 20


def test_a_host_rotating_its_slash_64_gets_at_most_the_documented_bound():
    policy, clock = limits(leak=0.0)
    outside = v6(2, 1)
    got, answered_outside = [], 0
    seconds = 60
    for second in range(seconds):
        for host in range(100):  # 100 new addresses a second inside one /64
            clock.now = 3000 + second + host / 100
            got.append(policy.decide(v6(1, 100 * second + host)))
        answered_outside += policy.decide(outside) is ANSWER
    assert answered_outside == seconds  # clients outside that /64 are unaffected
    # The bound: each of 16 addresses' buckets, and the shared one (16 at
    # once, 1 a second); a rotated-through address's bucket is full again a
    # second after its one answer.
    bound = (16 + 1) * policy.burst + (16 + 1) * seconds
    assert got.count(ANSWER) <= bound
    assert len(policy) == 2  # the /64 is one entry, the client the other


def test_link_local_sources_on_two_links_are_two_sources():
    one, two = source_of("fe80::1%eth0"), source_of("fe80::1%eth1")
    assert one.key != two.key and one.network != two.network
    assert source_of("2001:db8::1%eth0").key == "2001:db8::1"  # no link to name
    policy, _ = limits(burst=1, leak=0.0)
    assert policy.decide(("fe80::1%eth0", 123, 0, 2)) is ANSWER
    assert policy.decide(("fe80::1%eth1", 123, 0, 3)) is ANSWER  # its own bucket
    assert policy.decide(("fe80::1%eth0", 123, 0, 2)) is DROP


# Connections: the same keys, counted, and a full /64 shared fairly


def test_connections_are_counted_per_address_per_slash_64_and_in_all():
    counts = ConnectionLimits(most=10, per_host=2, per_network=3)
    first = counts.keys(("2001:db8::1", 1, 0, 0))
    assert first == ("2001:db8::1", "2001:db8::/64")
    for _ in range(2):
        assert counts.admit(first) == (None, None)
        counts.add(first)
    assert counts.admit(first) == ("per_host", None)
    second = counts.keys(("2001:db8::2", 1, 0, 0))
    counts.add(second)
    # The /64 is full: a third host gets the place of one of the first's.
    third = counts.keys(("2001:db8::3", 1, 0, 0))
    assert counts.admit(third) == (None, "2001:db8::1")
    assert counts.refusal(third) == "per_network"  # where none can be cut
    counts.displace(first)
    counts.add(third)
    assert counts.open == 4  # the cut one counts in all until it closes
    assert counts.admit(counts.keys(("2001:db8::4", 1, 0, 0))) == (
        "per_network",
        None,
    )  # every address holds one: none holds more than its share
    assert counts.admit(counts.keys(("::ffff:192.0.2.1", 1, 0, 0))) == (None, None)
    counts.remove(())
    counts.remove(first)
    assert counts.admit(first) == (None, None)
    everyone = ConnectionLimits(most=1, per_host=None, per_network=None)
    assert everyone.keys(("192.0.2.1", 1)) == ()
    everyone.add(())
    assert everyone.admit(()) == ("busy", None)


# What interleaved mode keeps of a source: in its entry, within the bound


def test_a_transmit_time_is_kept_for_its_source_and_given_once():
    policy, _ = limits()
    client, other = v4(1), v4(2)
    policy.remember(client, 11)
    assert policy.transmit_for(client, 11) is None  # its transmit time never came
    policy.remember(client, 13)
    policy.transmitted(client, 13, 5_000)
    policy.transmitted(client, 99, 6_000)  # not kept: nothing to set
    assert policy.transmit_for(other, 13) is None  # another source names it
    assert policy.transmit_for(client, 13) == 5_000
    assert policy.transmit_for(client, 13) is None  # given once
    assert policy.records == 1  # the source's entry; its stamps are gone


def test_a_source_keeps_its_latest_few_and_a_forgotten_source_its_none():
    policy, clock = limits(table_bytes=RECORD_BYTES * 100)
    client = v6(1, 1)  # an IPv6 source is kept by its /64
    for receive in range(1, 2 * policy.stamps_per_source + 2, 2):
        policy.remember(client, receive)
        policy.transmitted(v6(1, 2), receive, receive * 10)  # a neighbour's /64 too
    assert policy.transmit_for(client, 1) is None  # the oldest gave way
    last = 2 * policy.stamps_per_source + 1
    assert policy.transmit_for(client, last) == last * 10
    assert policy.records == 1 + policy.stamps_per_source - 1
    flood(policy, clock, 200, per_second=1000)  # the table forgets it
    assert policy.transmit_for(client, last - 2) is None
    assert policy.records <= 100


def test_without_a_limit_every_datagram_is_answered_and_the_table_kept():
    policy, _ = limits(limiting=False)
    policy.remember(v4(1), 3)
    assert len(policy) == 1 and policy.records == 2
    policy.configure(limiting=True)
    assert policy.limiting


def test_a_kept_transmit_time_costs_at_most_record_bytes():
    policy, clock = limits(table_bytes=RECORD_BYTES * 10_000)
    for n in range(100):
        policy.remember(v4(10**6 + n), 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5_000):
            clock.now += 0.0001
            policy.remember(v4(n), 2**62 + 2 * n + 1)
            policy.transmitted(v4(n), 2**62 + 2 * n + 1, 1_700_000_000 * 10**9 + n)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"a source with a transmit time: {used / policy.records:.0f} bytes an entry")
    assert used <= policy.records * RECORD_BYTES
