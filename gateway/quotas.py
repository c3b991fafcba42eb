"""Token quotas per API key: input and output tokens per minute and per day, each
counted separately, from what the model really read and produced (the gateway's
:class:`~gateway.usage.UsageTap` counts every forwarded answer).

Windows are fixed and aligned to the gateway's clock (60 s and 86 400 s long): a key
whose input or output tokens in the current window have reached a quota gets 429
naming the quota, with ``Retry-After`` the time to the window's end. A request is
charged when its answer ends (:class:`QuotaCharge`: just before the last body message
goes out, so a client's next request already sees it), so requests already running
when a quota fills may take it over by what they produce; the next one is refused.
Keys are the configured set (bounded); nothing here reads the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from pydantic import Field
from starlette.types import Message, Send

from gateway.usage import UsageTap
from runtime.errors import QuotaExceeded
from runtime.spec.frozen import Frozen

__all__ = ["QuotaBook", "QuotaCharge", "TokenQuota"]

_WINDOWS = {"minute": 60.0, "day": 86400.0}


class TokenQuota(Frozen):
    """One key's ``quota:``; an unset field is unlimited."""

    input_tokens_per_minute: int | None = Field(None, ge=1)
    output_tokens_per_minute: int | None = Field(None, ge=1)
    input_tokens_per_day: int | None = Field(None, ge=1)
    output_tokens_per_day: int | None = Field(None, ge=1)

    def limits(self) -> list[tuple[str, str, str, int]]:
        """(quota name, direction, window, limit) of each quota set."""
        out = []
        for direction in ("input", "output"):
            for window in _WINDOWS:
                name = f"{direction}_tokens_per_{window}"
                limit = getattr(self, name)
                if limit is not None:
                    out.append((name, direction, window, limit))
        return out


class QuotaBook:
    """Tokens used per key in the current windows; ``quotas`` by key name."""

    def __init__(self, quotas: Mapping[str, TokenQuota]) -> None:
        self.quotas = {k: q for k, q in quotas.items() if q.limits()}
        # key -> (direction, window) -> (window index, tokens used in it)
        self._used: dict[str, dict[tuple[str, str], tuple[int, int]]] = {k: {} for k in self.quotas}

    def used(self, key: str, direction: str, window: str, now: float) -> int:
        """Tokens ``key`` used in the window holding ``now``."""
        index, count = self._used.get(key, {}).get((direction, window), (-1, 0))
        return count if index == math.floor(now / _WINDOWS[window]) else 0

    def check(self, key: str, now: float) -> None:
        """QuotaExceeded (429) naming the first quota ``key`` has used up."""
        quota = self.quotas.get(key)
        if quota is None:
            return
        for name, direction, window, limit in quota.limits():
            used = self.used(key, direction, window, now)
            if used >= limit:
                length = _WINDOWS[window]
                retry = (math.floor(now / length) + 1) * length - now
                raise QuotaExceeded(
                    f"API key '{key}' has used its {name} quota: {used} of {limit} "
                    f"{direction} tokens this {window}; retry after the window ends",
                    retry_after=max(1.0, math.ceil(retry)),
                )

    def charge(self, key: str, now: float, input_tokens: int, output_tokens: int) -> None:
        """Add one answer's tokens to ``key``'s current windows."""
        if key not in self.quotas:
            return
        used = self._used[key]
        for direction, tokens in (("input", input_tokens), ("output", output_tokens)):
            for window, length in _WINDOWS.items():
                index = math.floor(now / length)
                before = self.used(key, direction, window, now)
                used[(direction, window)] = (index, before + max(0, tokens))


class QuotaCharge:
    """Charges one answer's counted tokens to ``key`` once: just before its last body
    message is sent (wrap the ``send`` with :meth:`send`), or at :meth:`close` for an
    answer that never got that far (a cut stream still cost what it produced)."""

    def __init__(
        self, book: QuotaBook, key: str, tap: UsageTap, clock: Callable[[], float], send: Send
    ) -> None:
        self._book, self._key, self._tap, self._clock, self._send = book, key, tap, clock, send
        self.charged = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.close()
        await self._send(message)

    def close(self) -> None:
        if not self.charged:
            self.charged = True
            self._book.charge(self._key, self._clock(), self._tap.prompt, self._tap.completion)
