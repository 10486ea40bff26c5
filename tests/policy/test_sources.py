"""What a source may get, by hand: the policy's own clock and random source
are the test's, so hours of a client's life run in a second and every leak
is the same on every run."""

from __future__ import annotations

import random

import pytest

from timeservice.policy.sources import (
    ANSWER,
    DROP,
    KISS,
    ConnectionLimits,
    SourceLimits,
)


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


def test_a_source_has_its_burst_then_its_rate():
    policy, clock = limits(rate=2.0, burst=3, spare_rate=0.0, spare_burst=0.0)
    assert [policy.decide(v4(1)) for _ in range(3)] == [ANSWER] * 3
    assert policy.decide(("::ffff:10.0.0.1", 1, 0, 0)) is DROP  # the same source
    assert policy.decide(v4(2)) is ANSWER  # another source, its own bucket
    clock.now += 0.5  # one token back at 2 a second
    assert policy.decide(v4(1)) is ANSWER


def test_an_unknown_setting_is_an_error():
    with pytest.raises(TypeError, match="unknown setting 'bursts'"):
        SourceLimits(bursts=3)


# A full table locks no one out


def flood(policy: SourceLimits, clock: Clock, count: int, per_second: float, first=0):
    """`count` new sources, one datagram each, `per_second` of them a second."""
    for n in range(first, first + count):
        clock.now += 1 / per_second
        policy.decide(v4(n))


def test_new_clients_get_their_own_bucket_once_a_flood_fills_the_table():
    policy, clock = limits()
    known = ("192.0.2.1", 123)
    assert policy.decide(known) is ANSWER
    flood(policy, clock, 70_000, per_second=70_000)
    assert len(policy) == policy.sources  # full
    # 50 new IPv4 clients: 2.0.0 answered none of them.
    assert all(policy.decide((f"198.51.100.{n}", 123)) is ANSWER for n in range(50))
    answered = {"known": 0, "new": 0}
    for second in range(8):  # then 2,000 new sources a second, and each asks
        flood(policy, clock, 2000, per_second=2000, first=100_000 + 2000 * second)
        answered["known"] += policy.decide(known) is ANSWER
        answered["new"] += policy.decide(("203.0.113.9", 123)) is ANSWER
    assert answered == {"known": 8, "new": 8}
    assert len(policy) == policy.sources  # bounded, however many came


def test_a_client_asking_every_1024_s_is_answered_during_a_flood():
    policy, clock = limits()
    client = ("192.0.2.77", 123)
    answered = []
    for poll in range(8):  # over two hours of the client's life
        clock.now += 1024 - 35
        # The 35 s before each poll: 2,000 new sources a second, more than
        # the table holds, so the client was forgotten long ago.
        flood(policy, clock, 70_000, per_second=2000, first=70_000 * poll)
        answered.append(policy.decide(client))
    assert answered == [ANSWER] * 8


# A forger cannot starve a client; what goes out stays bounded


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


def test_a_client_gets_the_time_though_its_address_is_forged_20_times_a_second():
    policy, clock = limits()
    got = forged(policy, clock, 20, seconds=3600)
    share = got["client"].count(ANSWER) / len(got["client"])
    kissed = got["client"].count(KISS)
    print(f"client answered {share:.3f} of its requests, kissed {kissed}")
    assert share >= 1 / 8
    assert got["client"].count(KISS) == 0  # a flood gets no kiss to back off on


@pytest.mark.parametrize("rate", [2, 5, 20, 100])
def test_an_address_gets_at_most_4_datagrams_a_second_after_its_burst(rate):
    policy, clock = limits()
    seconds = 300
    got = forged(policy, clock, rate, seconds)
    sent = sum(verdict is not DROP for who in got.values() for verdict in who)
    kisses = sum(verdict is KISS for who in got.values() for verdict in who)
    assert sent <= policy.burst + policy.spare_burst + 4 * seconds
    assert kisses <= seconds  # at most one a second
    share = got["client"].count(ANSWER) / seconds
    if rate <= 20:  # beyond, the client's share shrinks as the flood grows
        assert share >= (0.9 if rate <= 2 else 1 / 8)


def test_the_whole_server_sends_at_most_16_kisses_a_second():
    policy, clock = limits(burst=1, rate=0.0)
    kisses = 0
    for second in range(10):
        for n in range(200):  # each source a little over: 2 a second
            clock.now = 2000 + second + n / 200
            for _ in range(2):
                kisses += policy.decide(v4(n)) is KISS
    assert kisses <= 16 * 10 + 16


def test_a_source_over_its_limit_is_told_so_once_a_second():
    policy, clock = limits(burst=1, rate=0.0, leak=0.0, spare_rate=0.0, spare_burst=2)
    assert policy.decide(v4(1)) is ANSWER
    assert policy.decide(v4(1)) is KISS
    clock.now += 0.5
    assert policy.decide(v4(1)) is DROP  # told a moment ago
    clock.now += 0.5
    assert policy.decide(v4(1)) is KISS  # the last of what may go over the limit
    clock.now += 1
    assert policy.decide(v4(1)) is DROP


def test_over_the_limit_answers_leak_at_random():
    policy, clock = limits(burst=1, rate=0.0, spare_rate=0.0, spare_burst=2)
    assert policy.decide(v4(1)) is ANSWER
    assert policy.decide(v4(1)) is ANSWER  # leaked, from what may go over
    assert policy.decide(v4(1)) is ANSWER
    assert policy.decide(v4(1)) is DROP  # nothing left to send with
    assert policy.leaked == 2


# IPv6: the /64 decides first


def v6(network: int, host: int) -> tuple:
    return (f"2001:db8:{network:x}::{host:x}", 123, 0, 0)


def test_the_hosts_of_one_ipv6_lan_each_get_their_own_share():
    policy, _ = limits(rate=0.0)
    answered = sum(
        policy.decide(v6(1, host)) is ANSWER for host in range(1, 31) for _ in range(2)
    )
    assert answered == 60  # each its own bucket, under the /64's 64 at once


def test_one_host_rotating_its_slash_64_takes_one_place_in_the_table():
    policy, clock = limits()
    outside = v6(2, 1)
    answered = 0
    for second in range(8):
        for host in range(20):  # 20 new addresses a second inside one /64
            clock.now += 0.05
            policy.decide(v6(1, 1000 * second + host))
        answered += policy.decide(outside) is ANSWER
    assert answered == 8  # clients outside that /64 are unaffected
    assert len(policy) == 2  # the /64 is one source, the client the other


def test_a_rotating_slash_64_gets_a_slash_64s_share_and_one_addresss_kisses():
    policy, clock = limits()
    got = []
    seconds = 60
    for second in range(seconds):
        for host in range(20):
            clock.now = 3000 + second + host / 20
            got.append(policy.decide(v6(1, 20 * second + host)))
    factor = 4
    answers = got.count(ANSWER)
    assert answers <= factor * policy.burst + (factor + 3) * seconds
    assert got.count(KISS) <= seconds  # 2.0.0 sent 16 a second here


def test_a_forged_ipv6_client_is_bounded_as_an_ipv4_one():
    policy, clock = limits()
    got = []
    for second in range(100):
        for n in range(20):
            clock.now = 5000 + second + n / 20
            got.append(policy.decide(v6(3, 7)))
    assert sum(v is not DROP for v in got) <= policy.burst + policy.spare_burst + 400


# Connections: the same keys, counted


def test_connections_are_counted_per_address_per_slash_64_and_in_all():
    counts = ConnectionLimits(most=10, per_host=2, per_network=3)
    first = counts.keys(("2001:db8::1", 1, 0, 0))
    assert first == ("2001:db8::1", "2001:db8::/64")
    for _ in range(2):
        assert counts.refusal(first) is None
        counts.add(first)
    assert counts.refusal(first) == "per_host"
    second = counts.keys(("2001:db8::2", 1, 0, 0))
    counts.add(second)
    assert counts.refusal(counts.keys(("2001:db8::3", 1, 0, 0))) == "per_network"
    assert counts.refusal(counts.keys(("::ffff:192.0.2.1", 1, 0, 0))) is None
    counts.remove(first)
    assert counts.refusal(first) is None
    everyone = ConnectionLimits(most=1, per_host=None, per_network=None)
    assert everyone.keys(("192.0.2.1", 1)) == ()
    everyone.add(())
    assert everyone.refusal(()) == "busy"
