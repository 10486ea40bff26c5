"""The rate limit by hand: a bucket per source, a bounded table."""

from __future__ import annotations

from timeservice.policy.limits import RateLimiter


def test_a_bucket_allows_its_burst_then_its_rate():
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another source has its own bucket
    assert limiter.allow("a", 0.5)  # one token back after half a second at 2/s
    assert not limiter.allow("a", 0.5)
    assert [limiter.allow("a", 10.0) for _ in range(4)] == [True, True, True, False]


def test_the_limiter_remembers_a_bounded_number_of_sources():
    limiter = RateLimiter(rate=0.0, burst=1, sources=2, forget=60.0)
    assert limiter.allow("a", 0.0) and limiter.allow("b", 1.0)
    # "a" has been quiet for longer than `forget`: it makes room for "c".
    assert limiter.allow("c", 61.0)
    assert not limiter.allow("c", 61.0)  # its own bucket, now empty
    assert not limiter.allow("b", 61.0)  # still remembered, still empty
    assert limiter.allow("a", 200.0)  # forgotten, so a full bucket again
