"""Per-key rate limits, and a limit on failed authentications per client address:
token buckets fed the time (``now``, monotonic seconds) by the caller; nothing here
reads the clock. For one asyncio thread; not thread-safe."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import RateLimited

__all__ = ["FailureLimiter", "Limit", "RateLimiter", "TokenBucket"]


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
        wait = self.wait(now, n)
        if wait == 0.0:
            self._tokens -= n
        return wait

    def wait(self, now: float, n: float = 1) -> float:
        """0.0 when ``n`` tokens could be taken at ``now``, else the seconds until they
        can; takes nothing. ``n > burst`` is a ValueError."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of burst {self.burst}")
        if now > self._last:
            refill = (now - self._last) * self.rate_per_s
            self._tokens, self._last = min(float(self.burst), self._tokens + refill), now
        # Waiting exactly the returned time must succeed though now + wait is rounded.
        if self._tokens + 1e-9 + 4 * math.ulp(now) * self.rate_per_s >= n:
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


class FailureLimiter:
    """Failed authentications per client address: each failure takes a token from the
    address's bucket (``limit``), and an address with none left is refused before its
    key is even looked at (429). Addresses that never failed cost nothing; the table
    keeps the ``max_clients`` most recently failing ones (LRU), so a stranger cannot
    grow it without bound."""

    def __init__(self, limit: Limit, max_clients: int) -> None:
        if max_clients < 1:
            raise ValueError(f"need max_clients >= 1, got {max_clients}")
        self.limit, self.max_clients = limit, max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, now: float) -> None:
        """Raise :class:`RateLimited` while ``client`` has no failures left."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return
        wait = bucket.wait(now)
        if wait > 0:
            raise RateLimited(
                f"too many requests with a missing or unknown key from this address "
                f"({self.limit.rate_per_s:g}/s, burst {self.limit.burst}): retry after "
                f"{wait:.3g} s with a valid key",
                retry_after=wait,
            )

    def failed(self, client: str, now: float) -> None:
        """Count one failed authentication from ``client``."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
            bucket = self._buckets[client] = TokenBucket(self.limit.rate_per_s, self.limit.burst)
        else:
            self._buckets.move_to_end(client)
        bucket.take(now)
