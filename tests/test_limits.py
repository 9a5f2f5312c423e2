"""
The operator's limits on a fake clock: requests in flight, and each
initiator's rate (a token bucket: burst, refill, Retry-After).
"""

import pytest
from twisted.internet.task import Clock

from bridgeproxy.config import LimitsConfig
from bridgeproxy.errors import Overloaded, RateLimited
from bridgeproxy.proxy import limits
from bridgeproxy.proxy.limits import Limits, TokenBuckets


def test_concurrency_over_the_limit_is_503_with_retry_after():
    """A request that makes in-flight count exceed max_concurrency is refused (503, Retry-After: 1); at the
    limit it is not; 0 means no limit."""
    limited = Limits(LimitsConfig(max_concurrency=2), Clock())
    limited.check_concurrency(2)
    with pytest.raises(Overloaded) as caught:
        limited.check_concurrency(3)
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
    assert caught.value.message == "The gateway is at its concurrency limit; retry shortly."
    Limits(LimitsConfig(), Clock()).check_concurrency(10**6)


def test_rate_allows_a_burst_then_refills_at_the_rate():
    """An initiator gets its burst at once, then one request per 1/rate seconds; others are not affected."""
    clock = Clock()
    limited = Limits(LimitsConfig(per_initiator_rps=2.0, per_initiator_burst=3), clock)
    for _ in range(3):
        limited.check_rate("alice")
    with pytest.raises(RateLimited) as caught:
        limited.check_rate("alice")
    assert caught.value.status == 429 and caught.value.headers == {"Retry-After": "1"}
    assert caught.value.message == "Too many requests; slow down."
    limited.check_rate("bob")
    clock.advance(0.5)
    limited.check_rate("alice")
    with pytest.raises(RateLimited):
        limited.check_rate("alice")


def test_retry_after_is_the_wait_rounded_up():
    """Retry-After says how long until a token is there, in whole seconds rounded up (at least 1)."""
    clock = Clock()
    limited = Limits(LimitsConfig(per_initiator_rps=0.25, per_initiator_burst=1), clock)
    limited.check_rate("alice")
    clock.advance(1)
    with pytest.raises(RateLimited) as caught:
        limited.check_rate("alice")
    assert caught.value.headers == {"Retry-After": "3"}


@pytest.mark.parametrize("rps,burst", [(0.5, 1), (2.0, 2), (2.5, 3)])
def test_default_burst_is_the_rate_rounded_up(rps, burst):
    """Without per_initiator_burst, an initiator may make ceil(rate) requests at once (at least 1)."""
    limited = Limits(LimitsConfig(per_initiator_rps=rps), Clock())
    for _ in range(burst):
        limited.check_rate("alice")
    with pytest.raises(RateLimited):
        limited.check_rate("alice")


def test_no_rate_limit_by_default():
    """per_initiator_rps = 0 limits nothing."""
    limited = Limits(LimitsConfig(), Clock())
    assert limited.rate is None
    for _ in range(1000):
        limited.check_rate("alice")


def test_buckets_wait_and_refill_exactly():
    """take() answers 0 while tokens last, else the seconds until the next; the bucket never holds more than
    its burst, however long it was idle."""
    clock = Clock()
    buckets = TokenBuckets(clock, rate=4.0, burst=2)
    assert buckets.take("k") == 0 and buckets.take("k") == 0
    assert buckets.take("k") == pytest.approx(0.25)
    clock.advance(0.125)
    assert buckets.take("k") == pytest.approx(0.125)  # half a token there: 1/8 s to go
    clock.advance(100)
    first, second, third = (buckets.take("k") for _ in range(3))
    assert (first, second) == (0, 0) and third > 0


def test_buckets_are_forgotten_when_there_are_too_many(monkeypatch):
    """Past MAX_BUCKETS initiators, the buckets are dropped (memory stays bounded; dropping only forgives)."""
    monkeypatch.setattr(limits, "MAX_BUCKETS", 3)
    clock = Clock()
    buckets = TokenBuckets(clock, rate=0.001, burst=1)
    for key in "abc":
        assert buckets.take(key) == 0
    assert buckets.take("a") > 0
    assert buckets.take("d") == 0
    assert set(buckets.buckets) == {"d"}
    assert buckets.take("a") == 0
