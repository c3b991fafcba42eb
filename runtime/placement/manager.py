"""The runtime manager at run time: places every model, watches, re-plans, moves.

Decide, then act. :func:`replan_reason` is pure: from a model's current decision, a
fresh evaluation on the inventory of now, what the gateway observed and the model's
hysteresis state, it says whether to re-plan and why. :func:`accept_move` says whether
a new decision is worth a move. :class:`Manager` applies decisions in one async loop:
it probes the inventory (an injected ``probe``), snapshots observations, decides, and
hands new placements to the supervisor, which starts the new replicas before it drains
the old ones.

Triggers, with hysteresis:
- the hardware of the current tier is gone (no GPU, or not enough GPU/host memory): at
  once, whatever the cooldown;
- observed p95 above the goal (or half the requests failing) for a whole
  ``replan_window_s``: re-plan with the observed p95 in place of the prediction;
- observed load off the planned load by ``load_change_factor`` for a whole window:
  re-plan at the observed load.
A non-forced move needs ``replan_cooldown_s`` since the last one and a real gain: the
goal met where it was not, or ``min_gain`` lower cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.placement.gpu_packing import Resident
from runtime.placement.inventory import Inventory
from runtime.placement.policy import PlacementDecision, PolicyConfig, choose_runtime
from runtime.placement.profiles import Profile
from runtime.scaling.supervisor import Supervisor
from runtime.scaling.tiers import same_tier
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Device

__all__ = ["Manager", "Observed", "ReplanState", "Watch", "accept_move", "replan_reason"]

log = logging.getLogger("edgeinfer.manager")

_MIN_SAMPLES = 20
_MIN_RPS = 0.01  # below this a plan's load counts as idle: falling further is no change


@dataclass(frozen=True)
class Observed:
    """What the gateway saw for one model over the last window."""

    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None
    rps: float = 0.0
    queue_depth: int = 0
    last_request: float | None = None


class Watch:
    """Latencies and outcomes of one model's recent requests (the gateway feeds it)."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._seen: deque[tuple[float, float, bool]] = deque()
        self._since: float | None = None

    def record(self, now: float, seconds: float, ok: bool) -> None:
        if self._since is None:
            self._since = now
        self._seen.append((now, seconds, ok))

    def snapshot(self, now: float, queue_depth: int = 0) -> Observed:
        while self._seen and self._seen[0][0] < now - self.horizon:
            self._seen.popleft()
        n = len(self._seen)
        if not n:
            return Observed(queue_depth=queue_depth)
        lat = sorted(s for _, s, ok in self._seen if ok)
        p95 = (
            lat[max(0, math.ceil(0.95 * len(lat)) - 1)] * 1000 if len(lat) >= _MIN_SAMPLES else None
        )
        since = now if self._since is None else self._since
        span = min(self.horizon, max(1e-3, now - since))
        return Observed(
            requests=n,
            errors=sum(1 for _, _, ok in self._seen if not ok),
            p95_ms=p95,
            rps=n / span,
            queue_depth=queue_depth,
            last_request=self._seen[-1][0],
        )


@dataclass(frozen=True)
class ReplanState:
    """A model's hysteresis: since when a breach or a load change has held, when it
    last moved and when it was last re-planned (moved or not)."""

    breach_since: float | None = None
    load_since: float | None = None
    last_move: float = -math.inf
    last_replan: float = -math.inf


@dataclass(frozen=True)
class Replan:
    reason: str | None
    state: ReplanState
    forced: bool = False
    load_rps: float | None = None
    observed_p95: dict[str, float] = field(default_factory=dict)


def replan_reason(
    spec: ModelSpec,
    current: PlacementDecision,
    fresh: PlacementDecision,
    seen: Observed,
    state: ReplanState,
    cfg: PolicyConfig,
    now: float,
) -> Replan:
    """Whether to re-plan ``spec`` now, and with what; pure. ``fresh`` is the policy's
    evaluation on the inventory of now, used to see whether the current tier still fits."""
    primary = current.placement.primary
    mine = next((c for c in fresh.candidates if same_tier(c.tier, primary)), None)
    if mine is None or not mine.fits:
        why = (
            mine.reason
            if mine is not None
            else "the GPU is gone"
            if primary.device is Device.CUDA
            else f"{primary.key} is no longer available"
        )
        return Replan(
            f"{primary.key} lost its hardware: {why}",
            ReplanState(last_move=state.last_move, last_replan=state.last_replan),
            forced=True,
        )
    goal = spec.latency.p95_ms
    failing = seen.requests >= 10 and seen.errors * 2 >= seen.requests
    breach = failing or (seen.p95_ms is not None and seen.p95_ms > goal)
    breach_since = (now if state.breach_since is None else state.breach_since) if breach else None
    planned = current.load_rps
    # Up: enough requests at a rate well over the plan, or requests kept waiting in the
    # queue (a replica set that cannot keep up); down: a rate well under it.
    up = (seen.requests >= _MIN_SAMPLES and seen.rps > planned * cfg.load_change_factor) or (
        seen.queue_depth > 0
    )
    down = planned > _MIN_RPS and seen.rps < planned / cfg.load_change_factor
    off = up or down
    load_since = (now if state.load_since is None else state.load_since) if off else None
    state = ReplanState(breach_since, load_since, state.last_move, state.last_replan)
    if now - max(state.last_move, state.last_replan) < cfg.replan_cooldown_s:
        return Replan(None, state)
    if breach_since is not None and now - breach_since >= cfg.replan_window_s:
        p95 = math.inf if failing else float(seen.p95_ms or 0)
        what = "half its requests failed" if failing else f"observed p95 {p95:.0f} ms"
        return Replan(
            f"{what} > goal {goal:g} ms for {now - breach_since:.0f} s",
            state,
            load_rps=max(seen.rps, 1e-3),
            observed_p95={primary.key: p95},
        )
    if load_since is not None and now - load_since >= cfg.replan_window_s:
        queued = f", {seen.queue_depth} queued" if seen.queue_depth else ""
        rate = max(seen.rps, planned * cfg.load_change_factor) if seen.queue_depth else seen.rps
        return Replan(
            f"load {seen.rps:.2f} req/s{queued} vs {planned:.2f} planned "
            f"for {now - load_since:.0f} s",
            state,
            load_rps=max(rate, 1e-3),
        )
    return Replan(None, state)


def _start_failure(current: PlacementDecision, error: str | None, ready: int, r: Replan) -> Replan:
    """A primary tier whose replicas fail to start (a CUDA out-of-memory, a driver
    that is not there) and that has none ready: re-plan at once without it."""
    if error is None or ready:
        return r
    key = current.placement.primary.key
    return Replan(
        f"{key} cannot start: {error}", r.state, forced=True, observed_p95={key: math.inf}
    )


def _with_keep_alive(current: PlacementDecision, new: PlacementDecision) -> PlacementDecision:
    """``current`` with ``new``'s keep-alive on its primary, when both have the same
    primary tier (a keep-alive chosen at a new load; no replica moves for it)."""
    primary, fresh = current.placement.primary, new.placement.primary
    if not same_tier(primary, fresh) or primary.keep_alive_s == fresh.keep_alive_s:
        return current
    tiers = (replace(primary, keep_alive_s=fresh.keep_alive_s), *current.placement.tiers[1:])
    return replace(current, placement=replace(current.placement, tiers=tiers))


def accept_move(
    current: PlacementDecision, new: PlacementDecision, replan: Replan, cfg: PolicyConfig
) -> bool:
    """Move only to a different primary, and, unless forced, for a real gain."""
    if same_tier(current.placement.primary, new.placement.primary):
        return False
    if replan.forced:
        return True
    if new.goal_met and not current.goal_met:
        return True
    if replan.observed_p95 and new.goal_met:
        return True  # the current tier is missing its goal in practice
    old_cost = current.chosen.cost_per_hour if current.chosen else None
    new_cost = new.chosen.cost_per_hour if new.chosen else None
    if old_cost is None or new_cost is None or not new.goal_met:
        return False
    return new_cost <= old_cost * (1 - cfg.min_gain)


class Manager:
    """Places the models of ``config`` on ``supervisor`` and keeps them placed.

    ``probe`` returns the inventory of now (``runtime.placement.inventory.probe_local`` in
    ``edgeinfer serve``; a written or scripted one in tests); ``profiles`` maps a model
    name to its stored profiles; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        config: ModelConfig,
        supervisor: Supervisor,
        *,
        probe: Callable[[], Inventory],
        profiles: dict[str, tuple[Profile, ...]],
        policy: PolicyConfig,
        available: frozenset[RuntimeName] | None = None,
        cuda_runtimes: frozenset[RuntimeName] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 5.0,
        background: Callable[[Manager], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.probe = probe
        self.profiles = profiles
        self.policy = policy
        self.available = available
        self.cuda_runtimes = cuda_runtimes
        self.clock = clock
        self.tick = tick
        self.decisions: dict[str, PlacementDecision] = {}
        self.states: dict[str, ReplanState] = {}
        self.watches = {
            m.name: Watch(policy.replan_window_s) for m in config.models if m.endpoint is None
        }
        self.events: dict[str, deque[str]] = {name: deque(maxlen=20) for name in self.watches}
        self.inventory: Inventory | None = None
        self._planning = False
        self._task: asyncio.Task[None] | None = None
        self._background = background  # started with the loop (autoprofile.measure_missing)
        self._background_task: asyncio.Task[None] | None = None

    # -- the gateway's hook ------------------------------------------------------------

    def observe(self, model: str, status: int, seconds: float) -> None:
        """One finished request (any status); 5xx counts as an error."""
        watch = self.watches.get(model)
        if watch is not None and status != 404:
            watch.record(self.clock(), seconds, status < 500)

    def start_failed(self, model: str, error: str) -> None:
        """A replica of ``model`` failed to start (the supervisor's crash-loop hook): an
        event now; the next step re-plans without its tier if none is ready."""
        if model in self.events:
            self.events[model].append(f"start failed: {error}")

    def note(self, model: str, event: str) -> None:
        """An event for ``model``'s history in /admin/models."""
        if model in self.events:
            self.events[model].append(event)

    def profiled(self, model: str, profiles: tuple[Profile, ...]) -> None:
        """``model`` was measured (in the background, after start): decide again at once
        on its new profiles. A first measurement is not a flap: no cooldown applies."""
        spec = self.config.get(model)
        current = self.decisions.get(model)
        if spec is None or current is None:
            return
        self.profiles[model] = profiles
        new = self._choose(spec, self.probe(), self.clock(), load_rps=current.load_rps)
        verb = (
            "stays on"
            if same_tier(new.placement.primary, current.placement.primary)
            else ("placed on")
        )
        event = f"measured: {verb} {new.placement.primary.key}: {new.reason}"
        if new.placement == current.placement:
            self.decisions[model] = new
            self.note(model, event)
            return
        self._apply(model, new, event)  # a bridge or warm replica may change with the tier
        self.states[model] = ReplanState(last_move=self.clock())

    # -- deciding ----------------------------------------------------------------------

    def _resident(self, now: float, exclude: str) -> tuple[Resident, ...]:
        """The GPU ledger: models whose primary is on this host's GPU."""
        out = []
        for name, d in self.decisions.items():
            chosen = d.chosen
            if name == exclude or chosen is None or chosen.gpu is None:
                continue
            pool = self.supervisor.pools.get(name)
            seen = self.watches[name].snapshot(now)
            last = seen.last_request if seen.last_request is not None else d.decided_at
            # Idle, and so evictable, means: no request in flight or queued, none for a
            # whole window, and not moved within the cooldown (two models that want
            # one GPU must not evict each other back and forth). While the first plan
            # is made every placed model counts as busy, as in `edgeinfer plan`.
            moved = self.states.get(name, ReplanState()).last_move
            busy = (
                self._planning
                or bool(pool and (pool.status().in_flight or pool.status().queued))
                or now - last < self.policy.replan_window_s
                or now - moved < self.policy.replan_cooldown_s
            )
            out.append(Resident(name, chosen.gpu, chosen.memory_mib, last, busy))
        return tuple(out)

    def _choose(self, spec: ModelSpec, inv: Inventory, now: float, **kw: Any) -> PlacementDecision:
        return choose_runtime(
            spec,
            self.profiles.get(spec.name, ()),
            inv,
            self.policy,
            now,
            resident=self._resident(now, spec.name),
            available=self.available,
            cuda_runtimes=self.cuda_runtimes,
            **kw,
        )

    def plan(self) -> dict[str, PlacementDecision]:
        """The first decision for every model, on the inventory of now."""
        now = self.clock()
        self.inventory = inv = self.probe()
        self._planning = True
        try:
            for spec in self.config.models:
                if spec.endpoint is None:
                    d = self._choose(spec, inv, now)
                    self.decisions[spec.name] = d
                    self.states[spec.name] = ReplanState(last_move=now)
                    self.events[spec.name].append(
                        f"placed on {d.placement.primary.key}: {d.reason}"
                    )
        finally:
            self._planning = False
        return self.decisions

    def step(self) -> None:
        """One loop iteration: probe, decide per model, apply the moves."""
        now = self.clock()
        self.inventory = inv = self.probe()
        for spec in self.config.models:
            current = self.decisions.get(spec.name)
            if current is None:
                continue
            pool = self.supervisor.pools.get(spec.name)
            status = pool.status() if pool else None
            seen = self.watches[spec.name].snapshot(now, status.queued if status else 0)
            # Host memory its own running replicas hold is not in the way of itself.
            held = self._held_mib(
                spec.name, current, status.ready + status.starting if status else 0
            )
            mine = inv.model_copy(update={"memory_free_mib": inv.memory_free_mib + held})
            fresh = self._choose(spec, mine, now, load_rps=current.load_rps)
            r = replan_reason(spec, current, fresh, seen, self.states[spec.name], self.policy, now)
            if r.reason is None and pool is not None and status is not None:
                r = _start_failure(current, pool.start_error, status.ready, r)
            self.states[spec.name] = r.state
            if r.reason is None:
                continue
            new = (
                fresh
                if r.load_rps is None and not r.observed_p95
                else self._choose(
                    spec,
                    inv,
                    now,
                    load_rps=r.load_rps if r.load_rps is not None else current.load_rps,
                    observed_p95=r.observed_p95,
                )
            )
            if accept_move(current, new, r, self.policy):
                self._apply(spec.name, new, f"{r.reason}: moved to {new.placement.primary.key}")
                self._evict(new, inv, now)
                self.states[spec.name] = ReplanState(last_move=now, last_replan=now)
            else:
                # Keep the tier but remember the new load and reasons (no move); the
                # keep-alive chosen at the new load applies at once (it moves nothing).
                kept = _with_keep_alive(current, new)
                self.decisions[spec.name] = replace(
                    kept, load_rps=new.load_rps if r.load_rps else current.load_rps
                )
                if kept.placement != current.placement and pool is not None:
                    pool.set_placement(kept.placement)
                if not r.forced:
                    self.states[spec.name] = ReplanState(
                        last_move=r.state.last_move, last_replan=now
                    )
                self.events[spec.name].append(
                    f"{r.reason}: stays on {current.placement.primary.key}"
                )

    def _held_mib(self, model: str, current: PlacementDecision, replicas: int) -> int:
        chosen = current.chosen
        if chosen is None or chosen.tier.device is not Device.CPU or chosen.tier.cluster:
            return 0
        return int(chosen.memory_mib * replicas)

    def _apply(self, model: str, decision: PlacementDecision, event: str) -> None:
        log.info("%s: %s", model, event)
        moved = model in self.decisions and not same_tier(
            self.decisions[model].placement.primary, decision.placement.primary
        )
        if moved:  # what was seen of the old tier says nothing of the new one
            self.watches[model] = Watch(self.policy.replan_window_s)
        self.decisions[model] = decision
        self.events[model].append(event)
        pool = self.supervisor.pools.get(model)
        if pool is not None:
            pool.set_placement(decision.placement)

    def _evict(self, decision: PlacementDecision, inv: Inventory, now: float) -> None:
        """Models the new placement evicts from the GPU go to their best tier without it."""
        chosen = decision.chosen
        if chosen is None or not chosen.evict:
            return
        no_gpu = inv.model_copy(
            update={"gpus": tuple(g for g in inv.gpus if g.index != chosen.gpu)}
        )
        for name in chosen.evict:
            spec = self.config.get(name)
            if spec is not None:
                d = self._choose(spec, no_gpu, now)
                self._apply(
                    name,
                    d,
                    f"evicted from GPU{chosen.gpu} for {decision.model} "
                    f"(least recently used, idle): moved to {d.placement.primary.key}",
                )

    # -- the loop ----------------------------------------------------------------------

    async def start(self) -> None:
        """Plan, hand the placements to the supervisor, start it, then watch."""
        self.plan()
        await self.supervisor.start({n: d.placement for n, d in self.decisions.items()})
        self._task = asyncio.create_task(self._run())
        if self._background is not None:
            self._background_task = asyncio.create_task(self._background(self))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.step()
            except Exception:  # a bad probe or step must not stop the gateway
                log.exception("runtime manager step failed")

    async def stop(self) -> None:
        for task in (self._background_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.supervisor.stop()

    def describe(self, model: str) -> dict[str, Any] | None:
        d = self.decisions.get(model)
        if d is None:
            return None
        return {**d.as_dict(), "events": list(self.events[model])}
