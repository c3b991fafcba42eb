"""Per-key rate limits: token buckets fed the time (``now``, monotonic seconds) by the
caller; nothing here reads the clock. For one asyncio thread; not thread-safe."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import RateLimited

__all__ = ["Limit", "RateLimiter", "TokenBucket"]


@dataclass(frozen=True)
class Limit:
    """``rate_per_s`` tokens refill per second, up to ``burst`` held at once."""

    rate_per_s: float
    burst: int


class TokenBucket:
    """A bucket that starts full with ``burst`` tokens and refills at ``rate_per_s``."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s, self.burst = rate_per_s, burst
        self._tokens, self._last = float(burst), -math.inf

    def take(self, now: float, n: float = 1) -> float:
        """0.0 when ``n`` tokens are taken at ``now``, else the seconds until they can be
        (nothing taken). Time going backwards adds nothing; ``n > burst`` is a ValueError."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of burst {self.burst}")
        if now > self._last:
            refill = (now - self._last) * self.rate_per_s
            self._tokens, self._last = min(float(self.burst), self._tokens + refill), now
        # Waiting exactly the returned time must succeed though now + wait is rounded.
        if self._tokens + 1e-9 + 4 * math.ulp(now) * self.rate_per_s >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate_per_s


class RateLimiter:
    """A :class:`TokenBucket` per key id, made on first use, from ``limits[id]``, else
    ``default``; neither = unlimited. Ids are the authenticator's fixed set (bounded)."""

    def __init__(self, limits: Mapping[str, Limit], default: Limit | None = None) -> None:
        self._limits, self._default = dict(limits), default
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key_id: str, now: float) -> None:
        """Count one request for ``key_id``; raise :class:`RateLimited` when over its rate."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            limit = self._limits.get(key_id, self._default)
            if limit is None:
                return
            bucket = self._buckets[key_id] = TokenBucket(limit.rate_per_s, limit.burst)
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(
                f"rate limit for key '{key_id}' exceeded ({bucket.rate_per_s:g} requests/s, "
                f"burst {bucket.burst}): retry after {wait:.3g} s, or ask for a higher rate",
                retry_after=wait,
            )
