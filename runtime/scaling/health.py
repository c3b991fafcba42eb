"""Whether a serving replica is still healthy: a liveness probe and a progress watchdog.

As Kubernetes' liveness probe (``periodSeconds``, ``timeoutSeconds``,
``failureThreshold``) and Knative's queue-proxy see a pod: every ``period_seconds`` the
supervisor asks each ready or draining replica whether it lives (a worker's
``/v2/health/live``), and a replica that misses ``failure_threshold`` answers in a row
is unhealthy. A frozen worker (SIGSTOP, a stuck event loop) answers nothing, so it is
found within ``period * failure_threshold`` (+ one period) seconds. The progress
watchdog catches a replica whose HTTP server still answers but whose work has stopped:
requests in flight and no byte of an answer for ``progress_timeout_seconds``.

:func:`judge` is the decision (pure: misses, load and times in, a reason or None out);
:func:`watch` is the loop that probes and applies it. The pool takes an unhealthy
replica out of rotation, kills and replaces it (``runtime.scaling.pool``).

Crash-loop back-off (:func:`backoff_seconds`) is set here too: a replica that fails to
start, or dies soon after, delays the next start exponentially.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import Field

from runtime.spec.frozen import Frozen

__all__ = ["HealthConfig", "Liveness", "backoff_seconds", "judge", "watch"]


class HealthConfig(Frozen):
    """The ``gateway: health:`` section: how replicas are probed and when a crash loop
    backs off. The defaults take a frozen replica out of rotation within about 4 s."""

    period_seconds: float = Field(1.0, gt=0, le=60, description="between two liveness probes")
    timeout_seconds: float = Field(
        1.0, gt=0, le=60, description="a probe not answered in this long is a miss"
    )
    failure_threshold: int = Field(
        3, ge=1, le=100, description="misses in a row, then the replica is unhealthy"
    )
    progress_timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=86400,
        description=(
            "requests in flight and no byte of an answer for this long: unhealthy "
            "(None: the model's request timeout, which no answer may outlast anyway); "
            "keep it above the slowest non-streamed answer"
        ),
    )
    backoff_initial_seconds: float = Field(
        1.0, gt=0, le=600, description="delay before restarting after a first failed start"
    )
    backoff_max_seconds: float = Field(
        60.0, gt=0, le=3600, description="the longest delay between two restarts"
    )
    crash_window_seconds: float = Field(
        30.0, ge=0, le=3600, description="a replica dying this soon after it started crashed"
    )


class Liveness(Protocol):
    """``await liveness(replica_url, limit_s)``: True when the replica answered that it
    lives within ``limit_s`` seconds."""

    def __call__(self, url: str, limit_s: float) -> Awaitable[bool]: ...


def judge(
    config: HealthConfig, *, misses: int, in_flight: int, last_progress: float, now: float
) -> str | None:
    """Why a replica is unhealthy, or None: ``misses`` liveness probes missed in a row,
    ``in_flight`` requests on it, ``last_progress`` the last time (seconds, as ``now``)
    it began a request while idle or sent a byte of an answer."""
    if misses >= config.failure_threshold:
        return f"missed {misses} liveness probes in a row ({config.timeout_seconds:g}s each)"
    limit = config.progress_timeout_seconds
    if limit is not None and in_flight and now - last_progress > limit:  # None: unset
        return (
            f"{in_flight} request(s) in flight and no byte of an answer for "
            f"{now - last_progress:.1f}s (limit {limit:g}s)"
        )
    return None


def backoff_seconds(config: HealthConfig, failures: int) -> float:
    """The delay before the next start after ``failures`` failed starts in a row:
    0 before any, then initial, 2x initial, 4x ... up to the maximum."""
    if failures <= 0:
        return 0.0
    delay = config.backoff_initial_seconds * 2 ** min(failures - 1, 30)
    return float(min(config.backoff_max_seconds, delay))


class Watched(Protocol):
    """What :func:`watch` reads of a replica (``runtime.scaling.replica.Replica``)."""

    @property
    def url(self) -> str: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def last_progress(self) -> float: ...


async def watch(
    replica: Watched,
    config: HealthConfig,
    liveness: Liveness,
    serving: Callable[[], bool],
    on_unhealthy: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe ``replica`` every period while ``serving()`` holds; the first time
    :func:`judge` finds it unhealthy, call ``on_unhealthy(reason)`` and return.
    ``clock`` must be the clock ``replica.last_progress`` is written in."""
    misses = 0
    while serving():
        began = clock()
        alive = await liveness(replica.url, config.timeout_seconds)
        if not serving():
            return
        misses = 0 if alive else misses + 1
        reason = judge(
            config,
            misses=misses,
            in_flight=replica.in_flight,
            last_progress=replica.last_progress,
            now=clock(),
        )
        if reason is not None:
            on_unhealthy(reason)
            return
        await asyncio.sleep(max(0.0, config.period_seconds - (clock() - began)))
