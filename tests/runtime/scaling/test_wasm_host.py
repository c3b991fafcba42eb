"""runtime.scaling.wasm_host: which replicas go into the WASM host, the in-host
process handle (fake host process), and the real launcher under a supervisor with a
real host process: scale from zero spawns nothing, scale to zero releases the model
inside the host, a dead host ends its models' replicas and is started again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from runtime.scaling.replica import Replica, ReplicaState
from runtime.scaling.supervisor import Supervisor
from runtime.scaling.wasm_host import InHostModel, WasmHostLauncher, in_host
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName, load_config
from runtime.spec.placement import Device, Tier, TierRole
from tests.runtime.scaling.fakes import FakeLauncher, FakeProcess

PACKAGES = Path(__file__).resolve().parents[3] / "wasm-modules" / "packages"


def _spec(name: str, runtimes: list[str], **extra: object) -> ModelSpec:
    artifacts = {"wasm": "pkg"} if "wasm" in runtimes else {}
    if "onnx" in runtimes:
        artifacts["onnx"] = "m.onnx"
    return ModelSpec.model_validate(
        {
            "name": name,
            "task": "embedding",
            "artifacts": artifacts,
            "runtimes": runtimes,
            **extra,
        }
    )


WASM = Tier(RuntimeName.WASM, Device.CPU)
ONNX = Tier(RuntimeName.ONNX, Device.CPU)


@pytest.mark.parametrize(
    ("runtimes", "tier", "want"),
    [
        (["wasm"], None, True),  # no placement: its first runtime
        (["onnx", "wasm"], None, False),
        (["onnx", "wasm"], WASM, True),  # the manager placed it on wasm
        (["wasm", "onnx"], ONNX, False),
        (["onnx", "wasm"], Tier(RuntimeName.WASM, Device.CPU, role=TierRole.BRIDGE), True),
    ],
)
def test_in_host(runtimes: list[str], tier: Tier | None, want: bool) -> None:
    assert in_host(_spec("m", runtimes), tier) is want


def test_an_external_endpoint_is_never_in_the_host() -> None:
    spec = ModelSpec.model_validate(
        {"name": "e", "task": "embedding", "endpoint": "http://127.0.0.1:9"}
    )
    assert not in_host(spec, None) and not in_host(spec, WASM)


def test_in_host_handle_ends_on_release_and_with_the_host() -> None:
    async def run() -> None:
        host = FakeProcess(pid=4242)
        released: list[str] = []

        async def release() -> None:
            released.append("m")

        handle = InHostModel(host, release)  # type: ignore[arg-type]
        assert handle.pid == 4242 and handle.returncode is None
        waiter = asyncio.ensure_future(handle.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        handle.terminate()
        assert await asyncio.wait_for(waiter, 5) == 0
        assert released == ["m"] and handle.returncode == 0
        assert host.returncode is None  # the host lives on

        other = InHostModel(host, release)  # type: ignore[arg-type]
        waiter = asyncio.ensure_future(other.wait())
        host.exit(-9)
        assert await asyncio.wait_for(waiter, 5) == -9
        assert other.returncode == -9
        other.terminate()  # nothing to release in a dead host
        assert released == ["m"]

    asyncio.run(run())


def test_models_not_in_the_host_go_to_the_inner_launcher(tmp_path: Path) -> None:
    async def run() -> None:
        inner = FakeLauncher()
        native = _spec("native", ["onnx"])
        config = ModelConfig(models=[native])
        launcher = WasmHostLauncher(
            inner, config, log_dir=tmp_path, clock=time.monotonic, ready_timeout=5
        )
        assert not launcher.wasm_only()
        replica = await launcher(native, ONNX)
        assert inner.started and inner.started[0] is replica
        assert replica.path == "" and not launcher.host.running
        assert not launcher.wanted()

    asyncio.run(run())


# -- a real host process ---------------------------------------------------------------


def _config(tmp_path: Path) -> ModelConfig:
    raw = {
        "models": [
            {
                "name": name,
                "task": "embedding" if package == "minilm-engine" else "classify",
                "artifacts": {"wasm": str(PACKAGES / package)},
                "runtimes": ["wasm"],
                "scaling": {"min-scale": 0, "initial-scale": 0, "max-scale": 1},
                "options": {"max_input_tokens": 256}
                if package == "minilm-engine"
                else {"preprocess": "magika"},
            }
            for name, package in (("emb", "minilm-engine"), ("cls", "magika-engine"))
        ]
    }
    path = tmp_path / "models.yaml"
    path.write_text(json.dumps(raw))
    return load_config(path)


async def _host_table(launcher: WasmHostLauncher, session: aiohttp.ClientSession) -> dict:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{launcher.host.port}/admin/models"
    headers = {"authorization": f"Bearer {launcher.host.token}"}
    async with session.get(url, headers=headers) as r:
        assert r.status == 200
        return {m["name"]: m for m in (await r.json())["models"]}


async def _until(check: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for the pool's bookkeeping (it runs in its own tasks) to reach ``check``."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "the pool did not get there in time"
        await asyncio.sleep(0.02)


@pytest.mark.slow
def test_supervisor_scales_models_in_one_host(tmp_path: Path) -> None:
    async def run() -> None:
        config = _config(tmp_path)
        launcher = WasmHostLauncher(
            FakeLauncher(),
            config,
            log_dir=tmp_path / "logs",
            clock=time.monotonic,
            ready_timeout=120,
        )
        supervisor = Supervisor(config, launcher=launcher, tick=3600)
        await supervisor.start()
        session = aiohttp.ClientSession()
        try:
            emb, cls = supervisor.pool("emb"), supervisor.pool("cls")
            a = await emb.acquire(time.monotonic() + 120)
            b = await cls.acquire(time.monotonic() + 120)
            # One process: both replicas are the host, each under its own prefix.
            assert a.process.pid == b.process.pid == launcher.host.process.pid  # type: ignore[union-attr]
            assert a.url.endswith("/m/emb") and b.url.endswith("/m/cls")
            assert launcher.host.starts == 1
            async with session.post(
                f"{a.url}/v1/embeddings", json={"model": "emb", "input": "hi"}
            ) as r:
                assert r.status == 200
                assert len((await r.json())["data"][0]["embedding"]) == 384
            emb.release(a)
            cls.release(b)
            assert a.cold_start is not None and set(a.cold_start.phases) == {
                "spawn",
                "load",
                "warmup",
            }
            table = await _host_table(launcher, session)
            assert table["emb"]["active"] and table["emb"]["instances"] >= 1

            # Scale emb to zero: its replica drains and the host releases the model.
            emb.scale_down(1)
            await asyncio.wait_for(a.process.wait(), 30)
            await _until(lambda: not emb.replicas)
            assert a.state is ReplicaState.STOPPED
            table = await _host_table(launcher, session)
            assert not table["emb"]["active"] and table["emb"]["instances"] == 0
            assert table["cls"]["active"]  # the other model is untouched

            # From zero again: an in-host replica, no new process, nothing loaded.
            a2 = await emb.acquire(time.monotonic() + 60)
            emb.release(a2)
            assert launcher.host.starts == 1 and a2.cold_start is not None
            assert a2.cold_start.phases["warmup"] == 0.0

            # The host dies: every in-host replica ends; the next request starts a host.
            os.kill(launcher.host.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            await asyncio.wait_for(b.process.wait(), 30)
            await asyncio.wait_for(a2.process.wait(), 30)
            await _until(lambda: not emb.replicas and not cls.replicas)
            b2 = await cls.acquire(time.monotonic() + 120)
            cls.release(b2)
            assert launcher.host.starts == 2 and isinstance(b2, Replica)
        finally:
            await session.close()
            await supervisor.stop()
        assert not launcher.host.running

    asyncio.run(run())


def test_a_wasm_model_at_zero_starts_while_native_replicas_hold_every_core() -> None:
    """The core budget (runtime/scaling/cores.py) charges nothing for a replica on the
    wasm runtime: a WASM model's scale from zero neither waits for cores nor drains a
    busy native replica (before: it waited until the native model scaled down)."""
    from tests.runtime.scaling.fakes import FakeClock, settle

    zero = {"scaling": {"initial-scale": 0, "container-concurrency": 1}}
    native = _spec("native", ["onnx"], options={"threads": 2}, **zero)
    edge = _spec("edge", ["wasm"], options={"threads": 2}, **zero)
    config = ModelConfig(models=[native, edge])

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(config, launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        busy = asyncio.ensure_future(sup.pool("native").acquire(1e9))
        await settle()
        launcher.ready(0)
        await settle()
        held = busy.result()  # the native replica holds both cores, a request in flight
        assert sup.cores is not None and sup.cores.used() == 2
        call = asyncio.ensure_future(sup.pool("edge").acquire(1e9))
        await settle()
        assert [r.model for r in launcher.started] == ["native", "edge"]
        assert sup.pool("edge").status().cores == ""
        assert sup.pool("native").count(ReplicaState.READY) == 1  # not drained for it
        assert sup.cores.used() == 2  # the WASM replica holds none
        launcher.ready(1)
        await settle()
        sup.pool("edge").release(call.result())
        sup.pool("native").release(held)
        await sup.stop()

    asyncio.run(scenario())


def test_a_wasm_model_without_threads_is_launched_with_its_own_spec_not_zero_threads() -> None:
    """A replica in the WASM host takes no width from the core budget; its launch spec
    must stay the config's (before: ``options.threads`` was set to that width, 0, and
    the host refused the spec with a 400, so every in-host engine model failed to
    start from zero through ``serve``)."""
    from tests.runtime.scaling.fakes import FakeClock, settle

    zero = {"scaling": {"initial-scale": 0, "container-concurrency": 1}}
    native = _spec("native", ["onnx"], **zero)
    edge = _spec("edge", ["wasm"], **zero)
    config = ModelConfig(models=[native, edge])

    async def scenario() -> None:
        clock, launcher = FakeClock(), FakeLauncher()
        sup = Supervisor(config, launcher=launcher, clock=clock, tick=3600, cores=2)
        await sup.start()
        call = asyncio.ensure_future(sup.pool("edge").acquire(1e9))
        await settle()
        assert [s.name for s in launcher.specs] == ["edge"]
        assert launcher.specs[0].options.threads is None
        launcher.ready(0)
        await settle()
        sup.pool("edge").release(call.result())
        await sup.stop()

    asyncio.run(scenario())
