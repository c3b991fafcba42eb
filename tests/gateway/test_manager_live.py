"""The runtime manager in a live gateway with real workers: a model moves when the GPU
disappears, and a bridge serves while the GPU replica starts, with no failed request.

What is faked, and why (this host has no GPU):
- the inventory probe: a scripted one that reports a GPU, then none (and the build is
  taken to be able to use that GPU);
- the profiles the policy reads are written by the test (inputs, not measurements);
- the CUDA tier's worker: :class:`CpuStandIn` starts it as a real worker on the CPU,
  after the CUDA start-up time its profile states. Everything else is real: the
  gateway, the manager's loop step, the supervisor's move and drain, the worker
  processes, the HTTP traffic.
The same tests run without the stand-in on a GPU host (``test_gpu_loss_on_a_real_gpu``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.server import build_gateway
from runtime.backends.devices import cuda_available
from runtime.placement.inventory import CpuInfo, GpuInfo, Inventory
from runtime.placement.profiles import LoadPoint, Profile, ProfileStore, artifact_hash
from runtime.scaling.replica import ProcessHandle, Spawner, WorkerLauncher
from runtime.scaling.supervisor import Supervisor
from runtime.settings import Settings
from runtime.spec.model import ModelSpec, RuntimeName, load_config
from runtime.spec.placement import Device, Tier
from tests.gateway.conftest import MINILM, FakeClock, GatewayServer

pytestmark = pytest.mark.slow

CPU_ONLY = Inventory(cpu=CpuInfo(cores=2), memory_total_mib=16384, memory_free_mib=12000)
WITH_GPU = CPU_ONLY.model_copy(
    update={"gpus": (GpuInfo(index=0, name="GPU", memory_total_mib=16384, memory_free_mib=16000),)}
)


class CpuStandIn:
    """A spawner that runs a CUDA tier's worker on the CPU (named a fake: this host has
    no GPU), after ``cuda_start`` seconds, the CUDA start-up its profile states."""

    def __init__(self, inner: Spawner, cuda_start: float) -> None:
        self.inner = inner
        self.cuda_start = cuda_start
        self.started: list[str] = []

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def __call__(self, spec: ModelSpec, port: int, tier: Tier | None = None) -> ProcessHandle:
        self.started.append(tier.key if tier else "auto")
        if tier is not None and tier.device is Device.CUDA:
            await asyncio.sleep(self.cuda_start)
            tier = Tier(tier.runtime, Device.CPU, tier.cluster, tier.role)
        return await self.inner(spec, port, tier)


def _profile(spec: ModelSpec, device: str, digest: str, p95: float, cold: float) -> Profile:
    return Profile(
        model=spec.name,
        runtime=RuntimeName.ONNX,
        device=device,
        artifact_hash=digest,
        cold_start={"spawn": 0.01, "load": cold, "warmup": 0.0},
        points=(
            LoadPoint(
                concurrency=1,
                requests=20,
                p50_ms=p95 * 0.8,
                p95_ms=p95,
                throughput_rps=1000 / (p95 * 0.8),
            ),
        ),
        memory_mib=200,
        gpu_memory_mib=500 if device == "cuda" else None,
    )


class Live:
    def __init__(self, tmp_path: Path, stand_in: bool) -> None:
        self.inventory = WITH_GPU
        path = tmp_path / "models.yaml"
        model: dict[str, Any] = {
            **MINILM,
            "latency": {"p95_ms": 1000},
            "scaling": {"initial-scale": 0, "max-scale": 2},
        }
        path.write_text(
            yaml.safe_dump(
                {
                    "models": [model],
                    "gateway": {"tick_seconds": 60, "scale_to_zero_grace_seconds": 0},
                    # 100 req/s is more than this host's CPU replicas can carry (service 40 ms,
                    # one core each): the GPU wins while there is one.
                    "manager": {"tick_seconds": 3600, "expected_rps": {"minilm": 100}},
                }
            )
        )
        config = load_config(path)
        settings = Settings(state_dir=tmp_path / "state")
        store = ProfileStore(settings.state_dir / "profiles")
        spec = config.models[0]
        digest = artifact_hash(spec, RuntimeName.ONNX, config.base_dir, store.root)
        store.put(_profile(spec, "cpu", digest, p95=40, cold=0.05))
        store.put(_profile(spec, "cuda", digest, p95=3, cold=3.0))
        clock = FakeClock()
        app = build_gateway(config, settings, clock=clock, environ={}, probe=lambda: self.inventory)
        assert app.manager is not None
        if stand_in:
            assert isinstance(app.supervisor, Supervisor)
            launcher = app.supervisor.launcher
            assert isinstance(launcher, WorkerLauncher)
            self.spawner = CpuStandIn(launcher.spawner, cuda_start=3.0)
            launcher.spawner = self.spawner
            # Part of the same fake: the build is taken to use the GPU the probe claims.
            app.manager.cuda_runtimes = None
        self.gw = GatewayServer(app, clock)
        self.gw.start()
        assert app.manager is not None
        self.manager = app.manager

    def embed(self, client: httpx.Client, i: int) -> int:
        r = client.post(f"{self.gw.url}/v1/embeddings", json={"model": "minilm", "input": f"s{i}"})
        return r.status_code

    def tiers_ready(self) -> list[str]:
        return self.gw.on_loop(
            lambda: [
                f"{r.tier.key}:{r.tier.role.value}"
                for r in self.gw.pool("minilm").replicas
                if r.tier is not None and r.state.value == "ready"
            ]
        )


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    env = Live(tmp_path, stand_in=True)
    yield env
    env.gw.stop()


class Traffic:
    """Clients sending requests back to back until stopped; every status is kept."""

    def __init__(self, live: Live, clients: int = 3) -> None:
        self.live = live
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = 0
            while not self.stop.is_set():
                self.statuses.append(self.live.embed(client, n * 100000 + i))
                i += 1

    def finish(self) -> list[int]:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        return self.statuses


def test_bridge_serves_while_the_gpu_replica_starts(live: Live) -> None:
    decision = live.manager.decisions["minilm"]
    assert [t.key for t in decision.placement.tiers] == ["onnx-cuda", "onnx-cpu"]
    assert "bridges cold starts" in decision.reason
    with httpx.Client(timeout=120) as client:
        # From zero: the bridge (CPU, starts fast) answers while the GPU tier starts.
        assert live.embed(client, 0) == 200
        assert live.gw.status("minilm").bridge_served >= 1
        live.gw.wait_for(lambda: "onnx-cuda:primary" in live.tiers_ready())
        # Traffic moves to the primary; the bridge is drained.
        live.gw.wait_for(lambda: live.tiers_ready() == ["onnx-cuda:primary"])
        bridged = live.gw.status("minilm").bridge_served
        assert all(live.embed(client, i) == 200 for i in range(1, 6))
        assert live.gw.status("minilm").bridge_served == bridged
    info = live.gw.admin()["minilm"]
    assert info["runtime"] == "onnx-cuda" and info["bridge_served"] == bridged
    assert "bridges cold starts" in info["runtime_reason"]
    metrics = httpx.get(f"{live.gw.url}/metrics").text
    assert f'edgeinfer_bridge_requests_total{{model="minilm"}} {float(bridged)}' in metrics
    assert live.spawner.started[:2] == ["onnx-cuda", "onnx-cpu"]


def test_gpu_loss_moves_the_model_with_no_failed_request(live: Live) -> None:
    with httpx.Client(timeout=120) as client:
        assert live.embed(client, 0) == 200
    live.gw.wait_for(lambda: live.tiers_ready() == ["onnx-cuda:primary"])
    traffic = Traffic(live)
    live.gw.wait_for(lambda: len(traffic.statuses) >= 20)
    pid = live.gw.on_loop(lambda: live.gw.pool("minilm").replicas[0].process.pid)

    live.inventory = CPU_ONLY  # the GPU disappears
    live.gw.on_loop(live.manager.step)
    assert live.manager.decisions["minilm"].placement.primary.key == "onnx-cpu"
    # The new replica starts first; the old one serves until it is ready, then drains.
    live.gw.wait_for(lambda: live.tiers_ready() == ["onnx-cpu:primary"], timeout=120)
    before = len(traffic.statuses)
    live.gw.wait_for(lambda: len(traffic.statuses) >= before + 20)
    statuses = traffic.finish()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    live.gw.wait_for(lambda: not _alive(pid))
    info = live.gw.admin()["minilm"]
    assert info["runtime"] == "onnx-cpu" and info["moves"] == 1
    assert any("lost its hardware" in e for e in info["placement"]["events"])
    assert "NO candidate meets" in info["runtime_reason"]  # and it says so


@pytest.mark.skipif(cuda_available(), reason="needs a host where CUDA workers fail to load")
def test_a_gpu_tier_that_cannot_start_is_left_with_no_failed_request(tmp_path: Path) -> None:
    """No stand-in: the probe claims a GPU and the build is taken to use it, but the
    real CUDA worker fails to load here. The CPU bridge answers; the manager sees the
    start failure and moves the model to the CPU."""
    env = Live(tmp_path, stand_in=False)
    env.manager.cuda_runtimes = None  # before the first request: placements are lazy
    try:
        env.gw.on_loop(env.manager.plan)
        env.gw.on_loop(
            lambda: env.gw.pool("minilm").set_placement(env.manager.decisions["minilm"].placement)
        )
        assert env.manager.decisions["minilm"].placement.primary.key == "onnx-cuda"
        with httpx.Client(timeout=120) as client:
            assert env.embed(client, 0) == 200  # the bridge answers
        env.gw.wait_for(lambda: env.gw.on_loop(lambda: env.gw.pool("minilm").start_error))
        traffic = Traffic(env)
        try:
            env.gw.wait_for(lambda: len(traffic.statuses) >= 10)
            env.gw.on_loop(env.manager.step)
            decision = env.manager.decisions["minilm"]
            assert decision.placement.primary.key == "onnx-cpu"
            # The warm bridge replica is of the new primary tier: it serves on as one.
            bridged = env.gw.status("minilm").bridge_served
            before = len(traffic.statuses)
            env.gw.wait_for(lambda: len(traffic.statuses) >= before + 10)
            assert all(t.startswith("onnx-cpu:") for t in env.tiers_ready())
            assert env.gw.status("minilm").bridge_served == bridged
        finally:
            statuses = traffic.finish()
        assert set(statuses) == {200}
        events = env.gw.admin()["minilm"]["placement"]["events"]
        assert any("onnx-cuda cannot start" in e for e in events), events
    finally:
        env.gw.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU; this host has none")
def test_gpu_loss_on_a_real_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU hosts
    env = Live(tmp_path, stand_in=False)
    try:
        with httpx.Client(timeout=120) as client:
            assert env.embed(client, 0) == 200
        traffic = Traffic(env)
        env.gw.wait_for(lambda: len(traffic.statuses) >= 20)
        env.inventory = CPU_ONLY
        env.gw.on_loop(env.manager.step)
        env.gw.wait_for(lambda: env.tiers_ready() == ["onnx-cpu:primary"], timeout=120)
        assert set(traffic.finish()) == {200}
    finally:
        env.gw.stop()
