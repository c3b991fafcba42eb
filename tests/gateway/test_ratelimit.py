"""Token buckets on a fake timeline, and per-key isolation in the limiter."""

from __future__ import annotations

import pytest

from gateway.ratelimit import FailureLimiter, Limit, RateLimiter, TokenBucket
from runtime.errors import RateLimited

# (rate_per_s, burst, [(now, n, expected wait)]): waits chosen exact in binary floats.
TIMELINES = [
    pytest.param(
        2.0,
        3,
        [(0, 1, 0.0), (0, 1, 0.0), (0, 1, 0.0), (0, 1, 0.5), (0.25, 1, 0.25), (0.5, 1, 0.0)],
        id="burst-then-refill",
    ),
    pytest.param(
        2.0,
        3,
        [(0, 3, 0.0), (100, 3, 0.0), (100, 1, 0.5)],
        id="idle-refill-caps-at-burst",
    ),
    pytest.param(
        1.0,
        2,
        [(0, 2, 0.0), (0, 1, 1.0), (0, 1, 1.0), (0.5, 1, 0.5), (0.5, 2, 1.5)],
        id="refusal-consumes-nothing",
    ),
    pytest.param(
        4.0,
        4,
        [(10, 4, 0.0), (10.5, 2, 0.0), (10.25, 1, 0.25), (10.5, 1, 0.25)],
        id="time-going-back-adds-nothing",
    ),
    pytest.param(
        0.5,
        1,
        [(0, 1, 0.0), (1, 1, 1.0), (2, 1, 0.0), (2, 0.5, 1.0), (3, 0.5, 0.0)],
        id="slow-rate-fractional-take",
    ),
    pytest.param(
        8.0,
        2,
        [(0, 1, 0.0), (0, 1, 0.0), (0, 1, 0.125), (0.0625, 1, 0.0625), (0.125, 1, 0.0)],
        id="fast-rate",
    ),
]


@pytest.mark.parametrize(("rate", "burst", "steps"), TIMELINES)
def test_take_follows_the_timeline(
    rate: float, burst: int, steps: list[tuple[float, float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    for now, n, expected in steps:
        assert bucket.take(now, n) == expected, (now, n)


@pytest.mark.parametrize("rate", [3.0, 7.0, 0.1, 10 / 3, 1e-3, 977.0, 12345.0])
@pytest.mark.parametrize("start", [0.0, 1234.5678, 1e6 + 0.1, 1e8 + 0.3, 3e8 + 0.7])
def test_waiting_exactly_retry_after_succeeds(rate: float, start: float) -> None:
    bucket = TokenBucket(rate, 1)
    assert bucket.take(start) == 0.0
    wait = bucket.take(start)
    assert wait == pytest.approx(1 / rate, rel=1e-6)
    assert bucket.take(start + wait * 0.99) > 0.0
    assert bucket.take(start + wait) == 0.0


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)], ids=["zero-rate", "neg-rate", "no-burst"]
)
def test_bucket_rejects_impossible_limits(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate_per_s > 0 and burst >= 1"):
        TokenBucket(rate, burst)


def test_take_more_than_burst_is_an_error() -> None:
    with pytest.raises(ValueError, match="burst 2"):
        TokenBucket(1.0, 2).take(0.0, 3)


def test_limiter_keeps_keys_apart() -> None:
    limiter = RateLimiter({"alice": Limit(1.0, 1), "bob": Limit(0.5, 2)})
    limiter.check("alice", 0.0)
    with pytest.raises(RateLimited) as err:
        limiter.check("alice", 0.0)
    assert err.value.status == 429
    assert err.value.retry_after == 1.0
    assert "alice" in err.value.message and "retry after 1 s" in err.value.message
    limiter.check("bob", 0.0)  # alice's empty bucket is not bob's
    limiter.check("bob", 0.0)
    with pytest.raises(RateLimited) as err:
        limiter.check("bob", 0.5)
    assert err.value.retry_after == 1.5
    limiter.check("alice", 1.0)


@pytest.mark.parametrize(
    ("default", "requests_allowed"),
    [(None, 50), (Limit(1.0, 3), 3)],
    ids=["no-default-unlimited", "default-applies"],
)
def test_ids_without_their_own_limit(default: Limit | None, requests_allowed: int) -> None:
    limiter = RateLimiter({"alice": Limit(1.0, 1)}, default)
    for _ in range(requests_allowed):
        limiter.check("anonymous", 0.0)
    if default is not None:
        with pytest.raises(RateLimited):
            limiter.check("anonymous", 0.0)
        limiter.check("other", 0.0)  # each id gets its own bucket of the default


def test_failed_keys_are_limited_per_address() -> None:
    limiter = FailureLimiter(Limit(rate_per_s=1.0, burst=2), max_clients=10)
    limiter.check("10.0.0.1", 0.0)  # never failed: free
    limiter.failed("10.0.0.1", 0.0)
    limiter.check("10.0.0.1", 0.0)  # one failure left
    limiter.failed("10.0.0.1", 0.0)
    with pytest.raises(RateLimited) as refused:
        limiter.check("10.0.0.1", 0.0)
    assert refused.value.retry_after == 1.0
    limiter.check("10.0.0.2", 0.0)  # other addresses are not held back
    limiter.check("10.0.0.1", 1.0)  # refilled: checking takes nothing
    limiter.check("10.0.0.1", 1.0)


def test_the_failure_table_keeps_only_the_latest_addresses() -> None:
    limiter = FailureLimiter(Limit(rate_per_s=0.001, burst=1), max_clients=100)
    for i in range(5000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100
    with pytest.raises(RateLimited):
        limiter.check("10.0.19.135", 0.0)  # the latest (4999) is still held
    limiter.check("10.0.0.0", 0.0)  # the first was dropped: it starts afresh
