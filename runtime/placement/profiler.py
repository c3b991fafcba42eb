"""Measuring a profile: start a real worker on one runtime x device, time its cold start
phase by phase, then drive it with a fixed workload at concurrency 1 and at the model's
target concurrency (``edgeinfer profile``).

The worker is started the way the supervisor starts one (a spawner and
:class:`HttpReadiness`), so the cold-start phases mean the same as in
``/admin/models``. The workload per task is fixed so profiles compare: a short chat or
completion with 32 tokens out at temperature 0; one sentence to embed; one small text
file to classify.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import platform
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from runtime.backends.devices import cuda_available
from runtime.backends.registry import registered_runtimes, runtime_class
from runtime.errors import ModelNotFound, RuntimeUnavailable
from runtime.placement.profiles import LoadPoint, Profile, ProfileStore, artifact_hash
from runtime.scaling.forkserver import ForkServer
from runtime.scaling.replica import ColdStart, HttpReadiness, Replica, Spawner, spawn_worker
from runtime.settings import Settings
from runtime.spec.model import ModelConfig, ModelSpec, Task, bundled_config_path
from runtime.spec.placement import Device, Tier

__all__ = [
    "Outcome",
    "Workload",
    "measure",
    "profile_config",
    "target_concurrency",
    "workload_for",
]

log = logging.getLogger("edgeinfer.profiler")

_MAX_TOKENS = 32


@dataclass(frozen=True)
class Workload:
    path: str
    body: dict[str, Any]
    description: str
    generative: bool


def workload_for(spec: ModelSpec) -> Workload:
    """The request a profile of this model is measured with."""
    if spec.task is Task.CHAT:
        return Workload(
            "/v1/chat/completions",
            {
                "model": spec.name,
                "messages": [{"role": "user", "content": "Name three colours of the sea."}],
                "max_tokens": _MAX_TOKENS,
                "temperature": 0,
            },
            f"chat, short prompt, up to {_MAX_TOKENS} tokens out",
            True,
        )
    if spec.task is Task.COMPLETION:
        return Workload(
            "/v1/completions",
            {
                "model": spec.name,
                "prompt": "The sea is",
                "max_tokens": _MAX_TOKENS,
                "temperature": 0,
            },
            f"completion, short prompt, up to {_MAX_TOKENS} tokens out",
            True,
        )
    if spec.task is Task.EMBEDDING:
        return Workload(
            "/v1/embeddings",
            {"model": spec.name, "input": "The quick brown fox jumps over the lazy dog."},
            "embedding of one 9-word sentence",
            False,
        )
    if spec.task is Task.CLASSIFY:
        text = "def main():\n    print('hello, world')\n\nif __name__ == '__main__':\n    main()\n"
        return Workload(
            f"/v2/models/{spec.name}/infer",
            {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": [text]}]},
            "classification of one 80-byte Python file",
            False,
        )
    raise RuntimeUnavailable(
        f"model {spec.name!r}: no standard workload for task {spec.task.value!r}; "
        "it cannot be profiled"
    )


def target_concurrency(spec: ModelSpec, limit: int = 8) -> int:
    """The concurrency one replica is meant to carry (Knative's target, within the
    hard container-concurrency), capped at ``limit`` for the measurement."""
    target = math.ceil(spec.scaling.target)
    if spec.scaling.container_concurrency:
        target = min(target, spec.scaling.container_concurrency)
    return max(1, min(target, limit))


async def _one(session: aiohttp.ClientSession, url: str, work: Workload) -> tuple[float, int]:
    start = time.perf_counter()
    async with session.post(url, json=work.body) as r:
        body = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeUnavailable(f"profiling request failed with {r.status}: {body}")
    elapsed = time.perf_counter() - start
    tokens = int((body.get("usage") or {}).get("completion_tokens", 0)) if work.generative else 0
    return elapsed, tokens


async def _point(
    session: aiohttp.ClientSession, url: str, work: Workload, concurrency: int, requests: int
) -> LoadPoint:
    latencies: list[float] = []
    rates: list[float] = []
    queue = list(range(requests))

    async def client() -> None:
        while queue:
            queue.pop()
            elapsed, tokens = await _one(session, url, work)
            latencies.append(elapsed)
            if tokens:
                rates.append(tokens / elapsed)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return LoadPoint(
        concurrency=concurrency,
        requests=len(ordered),
        p50_ms=_quantile(ordered, 0.50) * 1000,
        p95_ms=_quantile(ordered, 0.95) * 1000,
        throughput_rps=len(ordered) / wall,
        tokens_per_s=sorted(rates)[len(rates) // 2] if rates else None,
    )


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


async def measure(
    spec: ModelSpec,
    tier: Tier,
    *,
    spawner: Spawner,
    artifact_hash: str,
    requests: int | None = None,
    ready_timeout: float = 600.0,
) -> Profile:
    """Start one replica of ``spec`` on ``tier``, measure it, stop it. ``spawner`` must
    have been started. Raises RuntimeUnavailable if the worker cannot load the model."""
    work = workload_for(spec)
    n = requests or (8 if work.generative else 40)
    clock = time.monotonic
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        # The first start may build what later starts find cached (an ONNX graph from
        # safetensors, a compiled WASM module): it is recorded apart, and the cold start
        # the policy plans with is the next one, what a replica scaling from zero sees.
        primer, first = await _start(spawner, spec, clock, tier, session, ready_timeout)
        await primer.stop(grace=10)
        replica, cold = await _start(spawner, spec, clock, tier, session, ready_timeout)
        try:
            async with session.get(f"{replica.url}/v2/health/ready") as r:
                load = (await r.json(content_type=None)).get("load", {})
            url = replica.url + work.path
            for _ in range(2):  # warm caches and lazy paths; not counted
                await _one(session, url, work)
            points = [await _point(session, url, work, 1, n)]
            target = target_concurrency(spec)
            if target > 1:
                points.append(await _point(session, url, work, target, max(n, 2 * target)))
            rss = _peak_rss_mib(replica.process.pid)
        finally:
            await replica.stop(grace=10)
    memory = float(load.get("memory_bytes", 0)) / (1 << 20)
    return Profile(
        model=spec.name,
        runtime=tier.runtime,
        device=tier.device.value,
        artifact_hash=artifact_hash,
        host=f"{platform.node()}: {_cpu_label()}",
        # A busy host measures slow: say how busy it was.
        note=f"load average {os.getloadavg()[0]:.1f} at the end of the measurement",
        measured_at=time.time(),
        workload=work.description,
        cold_start={k: round(v, 4) for k, v in cold.phases.items()},
        first_start_s=round(sum(first.phases.values()), 4),
        points=tuple(points),
        memory_mib=round(memory, 1),
        rss_mib=round(rss, 1),
        cpu_cores=float(spec.options.threads or os.cpu_count() or 1),
        gpu_memory_mib=round(memory, 1) if tier.device is Device.CUDA else None,
    )


async def _start(
    spawner: Spawner,
    spec: ModelSpec,
    clock: Callable[[], float],
    tier: Tier,
    session: aiohttp.ClientSession,
    ready_timeout: float,
) -> tuple[Replica, ColdStart]:
    """Start one replica and wait until it is ready; RuntimeUnavailable if it cannot."""
    readiness = HttpReadiness(session, clock, ready_timeout)
    replica = await spawn_worker(spawner, spec, clock, tier, readiness)
    try:
        return replica, await replica.ready()
    except Exception as exc:
        await replica.stop(grace=10)
        raise RuntimeUnavailable(f"{tier.key}: the worker did not start: {exc}") from exc


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _cpu_label() -> str:
    from runtime.placement.inventory import probe_local

    inv = probe_local(gpus=lambda: ())
    return f"{inv.cpu.cores} x {inv.cpu.model}"


@dataclass(frozen=True)
class Outcome:
    """What ``edgeinfer profile`` did for one model x runtime x device."""

    model: str
    tier: str
    status: str  # "measured", "reused" or "skipped"
    profile: Profile | None = None
    reason: str = ""


async def profile_config(
    config: ModelConfig,
    store: ProfileStore,
    settings: Settings,
    *,
    models: list[str] | None = None,
    force: bool = False,
    requests: int | None = None,
    cuda: bool | None = None,
) -> AsyncIterator[Outcome]:
    """Measure every eligible runtime x device of the models (all when None), reusing
    stored profiles of unchanged artifacts unless ``force``. A runtime this build does
    not have, or a device this host does not have, is skipped with the reason."""
    specs = [m for m in config.models if m.endpoint is None]
    if models:
        unknown = sorted(set(models) - {m.name for m in specs})
        if unknown:
            names = ", ".join(m.name for m in specs)
            raise ModelNotFound(f"no model {unknown[0]!r} to profile; models here: {names}")
        specs = [m for m in specs if m.name in models]
    has_cuda = cuda_available() if cuda is None else cuda
    spawner = ForkServer(
        config_path=Path(config.source or bundled_config_path()),
        log_dir=settings.state_dir / "logs" / "profile",
        socket_path=settings.state_dir / f"forkserver-profile-{os.getpid()}.sock",
    )
    started = False
    try:
        for spec in specs:
            for runtime in spec.runtimes:
                if runtime not in registered_runtimes():
                    yield Outcome(
                        spec.name,
                        f"{runtime.value}-*",
                        "skipped",
                        reason=f"runtime {runtime.value!r} is not in this build",
                    )
                    continue
                try:
                    cls = runtime_class(runtime)
                except RuntimeUnavailable as exc:
                    yield Outcome(spec.name, f"{runtime.value}-*", "skipped", reason=exc.message)
                    continue
                digest = artifact_hash(spec, runtime, config.base_dir, store.root)
                for device in (Device.CPU, Device.CUDA):
                    tier = Tier(runtime, device)
                    if device is Device.CUDA and not (has_cuda and cls.supports_cuda()):
                        why = (
                            "no CUDA device on this host"
                            if not has_cuda
                            else f"this build of {runtime.value} has no CUDA support"
                        )
                        yield Outcome(spec.name, tier.key, "skipped", reason=why)
                        continue
                    old = store.get(spec.name, runtime, device.value, digest)
                    if old is not None and not force:
                        yield Outcome(
                            spec.name,
                            tier.key,
                            "reused",
                            old,
                            reason="artifact unchanged since it was measured",
                        )
                        continue
                    if not started:
                        await spawner.start()
                        started = True
                    try:
                        profile = await measure(
                            spec, tier, spawner=spawner, artifact_hash=digest, requests=requests
                        )
                    except RuntimeUnavailable as exc:
                        yield Outcome(spec.name, tier.key, "skipped", reason=exc.message)
                        continue
                    store.put(profile)
                    yield Outcome(spec.name, tier.key, "measured", profile)
    finally:
        if started:
            await spawner.close()
