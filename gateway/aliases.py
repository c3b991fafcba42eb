"""Model aliases at the gateway: which model of an alias serves a request (weighted,
with its failover order), the request rewritten for that model, shadow copies, and the
alias metrics.

An alias (``aliases:`` in the config, :class:`runtime.spec.traffic.Alias`) is a name
clients call. Each request picks one target by weight (an injected ``random.Random``,
so tests fix the draw) and lists the alias's other models after it for failover
(:mod:`gateway.failover`). A share of requests is also copied to the shadow model: its
answer is read and dropped, only its status and latency are kept; copies are sheddable
and at most ``max_in_flight`` run at once per alias (more are skipped, and counted).
Metric labels are config names only: the alias, the model, the role and the status.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import Message, Receive, Send

from gateway.failover import in_order
from gateway.usage import UsageTap
from runtime.scaling.queue import Ticket
from runtime.spec.traffic import Alias, Priority

__all__ = [
    "AliasMetrics",
    "Plan",
    "Proxy",
    "Rewrite",
    "Router",
    "body_rewrite",
    "discard",
    "never_disconnects",
    "path_rewrite",
]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


Rewrite = Callable[[str], tuple[str, bytes]]
# The gateway's proxy of one request to one model: (receive, send, target, model, body,
# usage tap, ticket, key) -> the answer's status.
Proxy = Callable[[Receive, Send, str, str, bytes, UsageTap | None, Ticket, str], Awaitable[int]]


@dataclass(frozen=True)
class Plan:
    """Where one request to an alias goes: ``models`` in failover order (the chosen
    target first) and the ``shadow`` model when this request is copied to it."""

    alias: Alias
    models: tuple[str, ...]
    shadow: str | None


class AliasMetrics:
    """``edgeinfer_alias_requests_total{alias,model,role,status}`` (role: ``primary``,
    ``failover``, ``failed``, ``shadow``, ``shadow_skipped``) and
    ``edgeinfer_shadow_seconds{alias,model}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "edgeinfer_alias_requests",
            "Requests to aliases by the model that answered, its role and status",
            ["alias", "model", "role", "status"],
            registry=registry,
        )
        self.shadow_seconds = Histogram(
            "edgeinfer_shadow_seconds",
            "Shadow copies: time to the answer's last byte (answers discarded)",
            ["alias", "model"],
            buckets=_SECONDS,
            registry=registry,
        )


class Router:
    """The aliases of a config, by name; ``rng`` draws the targets and shadow shares."""

    def __init__(
        self, aliases: Sequence[Alias], registry: CollectorRegistry, rng: random.Random
    ) -> None:
        self.aliases = {a.name: a for a in aliases}
        self.metrics = AliasMetrics(registry)
        self._rng = rng
        self._shadows: dict[str, int] = {}  # copies in flight per alias
        self._tasks: set[asyncio.Task[None]] = set()

    def plan(self, name: str) -> Plan | None:
        """None when ``name`` is no alias."""
        alias = self.aliases.get(name)
        if alias is None:
            return None
        weights = [t.weight for t in alias.targets]
        chosen = self._rng.choices(alias.targets, weights=weights)[0].model
        order = (chosen, *(m for m in alias.order if m != chosen))
        shadow = alias.shadow
        copy = shadow is not None and self._rng.random() * 100 < shadow.percent
        return Plan(alias, order, shadow.model if copy and shadow is not None else None)

    def models(self, name: str) -> list[str]:
        """Every model alias ``name`` may send to, in failover order; [] for no alias."""
        alias = self.aliases.get(name)
        return alias.order if alias is not None else []

    def shadow(self, plan: Plan, run: Callable[[str], Awaitable[int]]) -> None:
        """Start ``run(shadow model)`` in the background (its status is all that is
        kept), unless ``max_in_flight`` copies of this alias run already."""
        shadow = plan.alias.shadow
        if plan.shadow is None or shadow is None:
            return
        name = plan.alias.name
        if self._shadows.get(name, 0) >= shadow.max_in_flight:
            self.metrics.requests.labels(name, plan.shadow, "shadow_skipped", "-").inc()
            return
        self._shadows[name] = self._shadows.get(name, 0) + 1
        task = asyncio.ensure_future(self._run_shadow(name, plan.shadow, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_shadow(
        self, name: str, model: str, run: Callable[[str], Awaitable[int]]
    ) -> None:
        start = time.perf_counter()
        try:
            status = await run(model)
        except Exception as exc:  # a shadow's failure is measured, never raised
            status = getattr(exc, "status", 500)
        finally:
            self._shadows[name] -= 1
        self.metrics.requests.labels(name, model, "shadow", str(status)).inc()
        self.metrics.shadow_seconds.labels(name, model).observe(time.perf_counter() - start)

    def answered(self, plan: Plan, model: str, status: int, failed: Sequence[str]) -> None:
        name = plan.alias.name
        for bad in failed:
            self.metrics.requests.labels(name, bad, "failed", "-").inc()
        role = "failover" if failed else "primary"
        self.metrics.requests.labels(name, model, role, str(status)).inc()

    async def serve(
        self,
        plan: Plan,
        proxy: Proxy,
        receive: Receive,
        send: Send,
        rewrite: Rewrite,
        tap: UsageTap | None,
        ticket: Ticket,
        key: str,
        *,
        stream: bool = False,
    ) -> tuple[int, str]:
        """Serve one request to an alias: its shadow copy, if drawn, then its models in
        failover order (``stall_seconds`` applies to streams only); the status and the
        model that answered."""

        async def attempt(model: str, out: Send) -> int:
            target, body = rewrite(model)
            return await proxy(receive, out, target, model, body, tap, ticket, key)

        async def copy(model: str) -> int:
            target, body = rewrite(model)
            shadow = Ticket(Priority.SHEDDABLE, f"shadow:{plan.alias.name}")
            # no usage tap and no key: a copy is never charged to the caller's quota
            return await proxy(never_disconnects, discard, target, model, body, None, shadow, "")

        self.shadow(plan, copy)
        stall = plan.alias.stall_seconds if stream else None
        outcome = await in_order(plan.models, attempt, send, stall_seconds=stall)
        self.answered(plan, outcome.model, outcome.status, [m for m, _ in outcome.failed])
        return outcome.status, outcome.model

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def body_rewrite(target: str, request: dict[str, Any]) -> Rewrite:
    """For a JSON API: the same target, the body with its ``model`` field set."""
    return lambda model: (target, json.dumps({**request, "model": model}).encode())


def path_rewrite(target: str, alias: str, suffix: str | None, body: bytes) -> Rewrite:
    """For OIP: the same body, the target's model name in the path replaced."""

    def rewrite(model: str) -> tuple[str, bytes]:
        prefix = f"/v2/models/{alias}"
        rest = target[len(prefix) :]
        if target.startswith(prefix) and (not rest or rest[0] in "/?"):
            return f"/v2/models/{model}{rest}", body
        # percent-encoded letters in the name: rebuilt (a version in the path is dropped)
        query = target.partition("?")[2]
        return f"/v2/models/{model}{suffix or ''}" + (f"?{query}" if query else ""), body

    return rewrite


async def discard(message: Message) -> None:
    """A ``send`` that drops the answer (a shadow copy's)."""


async def never_disconnects() -> Message:
    """A ``receive`` for a shadow copy: no client to hang up; waits until cancelled."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
