"""The gateway in cluster mode: every model served by its Knative Services.

``edgeinfer serve --cluster NAME`` puts a :class:`ClusterRouter` where the local
supervisor would be. It reads the Services edgeinfer applied on that cluster, or on each
of several (``--cluster`` repeated: a GPU primary in one, a bridge at an edge site in
another), every ``refresh`` seconds (status URLs, Ready, replicas), and for each request
picks the tier that answers it with :func:`route`, the manager's bridge across tiers:
while the primary (e.g. a GPU Service) is scaled to zero, a warm bridge (a WASM/CPU
Service kept at ``min-scale >= 1``) answers, and one wake-up request goes to the primary
so Knative scales it from zero; once it answers, traffic moves back to it. Knative's
activator does the queueing, so a request never waits here.

The gateway's upstream client speaks plain HTTP, so the router uses the cluster-local
``status.address.url`` (``http://<svc>.<ns>.svc.cluster.local``) by default; the
profile's ``route_via: url`` picks the external URL, which must then be ``http://`` too.
Whether the primary runs is read from its Revision's ``actualReplicas`` where the
cluster reports it; otherwise from the gateway's own traffic: a primary that has not
answered for longer than it takes Knative to scale it to zero is taken as cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from knative.status import ServiceStatus
from runtime.errors import BadInput, ModelNotFound, ModelNotReady
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import ColdStart, Replica, ReplicaState
from runtime.scaling.supervisor import PoolStatus
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelConfig, ModelSpec

__all__ = ["ClusterPool", "ClusterRouter", "Route", "TierView", "route"]

log = logging.getLogger("edgeinfer.knative.router")

Fetch = Callable[[ClusterSpec], list[ServiceStatus]]
# A cluster whose API server cannot be read is read again after refresh * 2^failures
# seconds, at most this long: its last known status serves meanwhile.
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class TierView:
    """One tier's Service as the router last saw it."""

    name: str
    tier: str
    role: str
    url: str | None
    ready: bool
    replicas: int | None  # running now; None where the cluster did not say
    cluster: str = ""
    path: str = ""  # the model's prefix on a multi-model Service (the WASM host)

    @property
    def key(self) -> str:
        return f"{self.cluster}/{self.name}"

    @classmethod
    def of(cls, status: ServiceStatus, cluster: ClusterSpec, path: str = "") -> TierView:
        url = status.url if cluster.route_via == "url" else (status.address or status.url)
        if url is not None and not url.startswith("http://"):
            log.warning("%s: %s is not plain http:// and cannot be proxied", status.name, url)
            url = None
        return cls(
            status.name,
            status.tier,
            status.role,
            url,
            status.is_ready,
            status.actual,
            cluster.name,
            path,
        )


@dataclass(frozen=True)
class Route:
    """Which tier takes the next request, and which (if any) to wake from zero."""

    target: TierView | None
    wake: TierView | None
    reason: str


def route(
    primary: TierView | None,
    bridges: Sequence[TierView],
    *,
    last_answer: float | None,
    now: float,
    idle_to_zero: float,
) -> Route:
    """The bridge rule, a pure function of what the router knows.

    The primary is cold when its Revision runs no replica, or (replicas unknown) when it
    has not answered for ``idle_to_zero`` seconds. A cold primary with a warm bridge:
    the bridge answers and the primary is woken. Otherwise the primary answers (if cold,
    Knative's activator holds the request while it scales from zero).
    """

    def usable(t: TierView | None) -> bool:
        return t is not None and t.url is not None and t.ready

    warm_bridge = next((b for b in bridges if usable(b) and b.replicas != 0), None)
    if not usable(primary):
        if warm_bridge is not None:
            return Route(warm_bridge, None, "primary not Ready: bridge answers")
        any_bridge = next((b for b in bridges if b.url), None)
        if primary is not None and primary.url:
            return Route(primary, None, "nothing Ready yet: primary (Knative queues)")
        return Route(any_bridge, None, "no primary URL: bridge" if any_bridge else "no URL")
    assert primary is not None
    if primary.replicas is not None:
        cold = primary.replicas == 0
    else:
        cold = last_answer is None or now - last_answer > idle_to_zero
    if cold and warm_bridge is not None:
        return Route(warm_bridge, primary, "primary scaling from zero: bridge answers")
    return Route(primary, None, "primary warm" if not cold else "primary cold, no warm bridge")


class ClusterPool:
    """One model's tiers on the cluster, with the ``ModelPool`` surface the gateway uses
    (``try_acquire``/``acquire``/``release``/``status``/``replicas``/``spec``)."""

    def __init__(
        self, spec: ModelSpec, clusters: str, clock: Callable[[], float], grace: float
    ) -> None:
        self.spec = spec
        self.clusters = clusters  # their names, for messages
        self._clock = clock
        # How long Knative takes to scale an idle Service to zero (stable window, grace
        # period, retention): after that long without an answer the primary is cold.
        rule = spec.scaling
        self.idle_to_zero = rule.window + grace + rule.scale_to_zero_pod_retention_period
        self.primary: TierView | None = None
        self.bridges: list[TierView] = []
        self.replicas: list[Replica] = []
        self._by_name: dict[str, Replica] = {}
        self.last_answer: float | None = None
        self.last_route: Route | None = None
        self.waking: asyncio.Task[None] | None = None
        self.cold_starts = 0
        self.last_cold_start: ColdStart | None = None
        self.on_wake: Callable[[ClusterPool, TierView], None] | None = None

    def update(self, views: Sequence[TierView]) -> None:
        """New status from the cluster."""
        self.primary = next((v for v in views if v.role == "primary"), None)
        self.bridges = [v for v in views if v.role == "bridge"]
        keep: dict[str, Replica] = {}
        for view in views:
            old = self._by_name.get(view.key)
            if view.url is None:
                continue
            if old is not None and old.base_url == view.url:
                keep[view.key] = old
            else:
                keep[view.key] = Replica.external(
                    self.spec.name, view.url, self._clock(), path=view.path
                )
            keep[view.key].state = ReplicaState.READY if view.ready else ReplicaState.STARTING
        self._by_name = keep
        self.replicas = list(keep.values())

    def decide(self) -> Route:
        decision = route(
            self.primary,
            self.bridges,
            last_answer=self.last_answer,
            now=self._clock(),
            idle_to_zero=self.idle_to_zero,
        )
        self.last_route = decision
        return decision

    def try_acquire(self, ticket: Ticket = STANDARD) -> Replica:
        """Priorities are not applied here: Knative's activator and queue-proxy queue."""
        decision = self.decide()
        if decision.target is None:
            raise ModelNotReady(
                f"model {self.spec.name!r} has no Service with a URL on {self.clusters} "
                "yet (run 'edgeinfer knative apply' and wait until "
                "it is Ready)",
                retry_after=5,
            )
        if decision.wake is not None and self.on_wake is not None and self.waking is None:
            self.on_wake(self, decision.wake)
        replica = self._by_name[decision.target.key]
        replica.begin()
        return replica

    async def acquire(self, deadline: float, *, ticket: Ticket = STANDARD) -> Replica:
        """Never waits: Knative's activator queues requests for a Service at zero."""
        return self.try_acquire()

    def release(self, replica: Replica, *, seconds: float | None = None) -> None:
        replica.end()
        if self.primary is not None and replica is self._by_name.get(self.primary.key):
            self.last_answer = self._clock()

    def take_out(self, replica: Replica, reason: str) -> None:
        """Nothing to take out: a Service's URL is Knative's, which routes around its
        own unhealthy pods; the request is tried again at the same URL."""
        log.info("%s: %s unreachable: %s", self.spec.name, replica.url, reason)

    def hold(self, until: float) -> None:
        """A cluster's replicas follow the Service's Knative scaling rule only."""
        raise BadInput(
            "field 'keep_alive': in cluster mode a model's replicas follow its Knative "
            "scaling rule (min-scale, scale-to-zero-pod-retention-period); leave it out"
        )

    def status(self) -> PoolStatus:
        views = [v for v in (self.primary, *self.bridges) if v is not None]
        last = self.last_route
        return PoolStatus(
            model=self.spec.name,
            ready=sum(v.replicas or 0 for v in views if v.ready),
            starting=int(self.waking is not None),
            draining=0,
            in_flight=sum(r.in_flight for r in self.replicas),
            queued=0,
            desired=sum(v.replicas or 0 for v in views),
            panic=False,
            reason=last.reason if last else "no request yet",
            cold_starts=self.cold_starts,
            last_cold_start=self.last_cold_start,
        )


class ClusterRouter:
    """The supervisor's place in cluster mode: pools fed from Knative status."""

    def __init__(
        self,
        config: ModelConfig,
        clusters: Sequence[ClusterSpec],
        *,
        fetch: Fetch | None = None,
        refresh: float = 2.0,
        scale_to_zero_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clusters = list(clusters)
        self._fetch = fetch
        self.refresh = refresh
        self._clock = clock
        self.pools: dict[str, ClusterPool] = {}
        for spec in config.models:
            if spec.runtimes:  # endpoint-only models are not on the cluster
                names = ", ".join(repr(c.name) for c in self.clusters)
                where = f"cluster {names}" if len(self.clusters) == 1 else f"clusters {names}"
                pool = ClusterPool(spec, where, clock, scale_to_zero_grace)
                pool.on_wake = self._wake
                self.pools[spec.name] = pool
        self.on_cold_start: Callable[[str, ColdStart], None] | None = None
        self._views: dict[str, list[tuple[str, TierView]]] = {}
        self.failures: dict[str, int] = {}  # failed reads in a row, per cluster
        self._next_read: dict[str, float] = {}  # clock time of a failing cluster's next read
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.Task[None] | None = None

    def pool(self, model: str) -> ClusterPool:
        pool = self.pools.get(model)
        if pool is None:
            names = ", ".join(sorted(self.pools))
            raise ModelNotFound(f"model {model!r} does not exist; models here: {names}")
        return pool

    def connect(self) -> None:
        """Connect to every cluster now (before serving), so a bad kubeconfig or an
        unreachable API server is a clear error at start, not a failed lifespan."""
        if self._fetch is not None:
            return
        from knative.kube import connect
        from knative.status import read_status

        conns = {c.name: connect(c) for c in self.clusters}
        self._fetch = lambda c: read_status(conns[c.name])

    async def start(self) -> None:
        if self._fetch is None:
            await asyncio.to_thread(self.connect)
        self._session = aiohttp.ClientSession()
        await self.sync()
        self._loop = asyncio.create_task(self._run())

    async def sync(self) -> None:
        """Read the Services' status once from every cluster and update every pool; a
        cluster that cannot be read keeps its last known views, and is read again only
        after its back-off (``refresh * 2^failures``, at most ``MAX_BACKOFF_S``)."""
        fetch = self._fetch
        assert fetch is not None
        now = self._clock()
        due = [c for c in self.clusters if now >= self._next_read.get(c.name, now)]
        results = await asyncio.gather(
            *(asyncio.to_thread(fetch, c) for c in due), return_exceptions=True
        )
        for cluster, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                n = self.failures[cluster.name] = self.failures.get(cluster.name, 0) + 1
                wait = min(MAX_BACKOFF_S, self.refresh * 2**n)
                self._next_read[cluster.name] = now + wait
                log.warning(
                    "cluster %s: status refresh failed %d time(s) in a row (%s); its last "
                    "known status serves, next read in %.0fs",
                    cluster.name,
                    n,
                    result,
                    wait,
                )
                continue
            self.failures.pop(cluster.name, None)
            self._next_read.pop(cluster.name, None)
            self._views[cluster.name] = [
                (model, TierView.of(s, cluster, path))
                for s in result
                # the WASM host serves each of its models under its own prefix
                for model, path in (
                    [(m, f"/m/{m}") for m in s.models] if s.models else [(s.model, "")]
                )
            ]
        by_model: dict[str, list[TierView]] = {}
        for views in self._views.values():
            for model, view in views:
                by_model.setdefault(model, []).append(view)
        for name, pool in self.pools.items():
            pool.update(by_model.get(name, []))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await self.sync()

    def _wake(self, pool: ClusterPool, primary: TierView) -> None:
        pool.waking = asyncio.create_task(self._wake_up(pool, primary))

    async def _wake_up(self, pool: ClusterPool, primary: TierView) -> None:
        """One request to the cold primary: Knative scales it from zero to answer it."""
        assert self._session is not None and primary.url is not None
        started = self._clock()
        try:
            timeout = aiohttp.ClientTimeout(total=pool.spec.scaling.timeout)
            async with self._session.get(
                primary.url + "/v2/health/ready", timeout=timeout
            ) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("waking %s failed: %s", primary.name, exc)
            ok = False
        finally:
            pool.waking = None
        if ok:
            now = self._clock()
            pool.last_answer = now
            pool.cold_starts += 1
            pool.last_cold_start = ColdStart({"scale_from_zero": now - started}, now)
            if self.on_cold_start is not None:
                self.on_cold_start(pool.spec.name, pool.last_cold_start)

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        for pool in self.pools.values():
            if pool.waking is not None:
                pool.waking.cancel()
        if self._session is not None:
            await self._session.close()
