"""The WASM host app (``runtime.worker.wasm_host``) in process, over real engine
models: several models in one host, scale to zero inside it, one model's timeout
leaving another untouched, eviction by memory budget, and the admin routes' refusals."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runtime.backends.wasm.reset import page_scan
from runtime.settings import Settings
from runtime.spec.model import ModelSpec, load_config
from runtime.worker.hosted import HostedModels
from runtime.worker.wasm_host import MAX_ADMIN_BODY, HostApp

pytestmark = pytest.mark.slow

PACKAGES = Path(__file__).resolve().parents[3] / "wasm-modules" / "packages"
TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SHELL = {
    "inputs": [
        {"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\necho hi\n"]}
    ]
}


def spec(name: str, package: Path, **extra: Any) -> ModelSpec:
    embedding = "minilm" in package.name
    raw: dict[str, Any] = {
        "name": name,
        "task": "embedding" if embedding else "classify",
        "artifacts": {"wasm": str(package)},
        "runtimes": ["wasm"],
        "options": {"max_input_tokens": 256} if embedding else {"preprocess": "magika"},
    }
    raw["options"].update(extra)
    return ModelSpec.model_validate(raw)


def slow_package(tmp: Path) -> Path:
    """minilm-engine with a 1 s deadline per call: a short text fits, a big batch not."""
    folder = tmp / "minilm-slow"
    shutil.copytree(PACKAGES / "minilm-engine", folder)
    manifest = folder / "edgeinfer-wasm.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["limits"]["timeout_s"] = 1.0
    manifest.write_text(yaml.safe_dump(raw))
    return folder


@asynccontextmanager
async def hosted() -> AsyncIterator[tuple[httpx.AsyncClient, HostedModels]]:
    config = load_config(PACKAGES / "models.yaml")
    models = HostedModels(Settings.from_env(), config.base_dir)
    app = HostApp(models, TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
        try:
            yield client, models
        finally:
            await models.close()


async def load(client: httpx.AsyncClient, s: ModelSpec) -> dict[str, Any]:
    r = await client.post(
        f"/admin/models/{s.name}/load", content=s.model_dump_json(by_alias=True), headers=AUTH
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def embed(client: httpx.AsyncClient, name: str, texts: list[str]) -> httpx.Response:
    return await client.post(
        f"/m/{name}/v1/embeddings", json={"model": name, "input": texts}, timeout=120
    )


async def classify(client: httpx.AsyncClient, name: str) -> httpx.Response:
    return await client.post(f"/m/{name}/v2/models/{name}/infer", json=SHELL, timeout=120)


def test_two_models_scale_to_zero_inside_the_host() -> None:
    asyncio.run(_two_models_scale_to_zero_inside_the_host())


async def _two_models_scale_to_zero_inside_the_host() -> None:
    async with hosted() as (client, models):
        first = await load(client, spec("tenant-a", PACKAGES / "minilm-engine"))
        assert first["ready"] and "warmup" in first["load"]["phases"]
        await load(client, spec("tenant-b", PACKAGES / "magika-engine"))
        a = await embed(client, "tenant-a", ["hello"])
        assert a.status_code == 200 and len(a.json()["data"][0]["embedding"]) == 384
        b = await classify(client, "tenant-b")
        assert b.status_code == 200 and b.json()["outputs"][0]["data"] == ["shell"]
        table = {
            m["name"]: m for m in (await client.get("/admin/models", headers=AUTH)).json()["models"]
        }
        assert table["tenant-a"]["instances"] >= 1 and table["tenant-a"]["active"]

        r = await client.post("/admin/models/tenant-a/release", headers=AUTH)
        assert r.status_code == 200 and r.json()["released_instances"] >= 1
        table = {
            m["name"]: m for m in (await client.get("/admin/models", headers=AUTH)).json()["models"]
        }
        assert table["tenant-a"]["instances"] == 0 and not table["tenant-a"]["active"]
        # One instance is kept parked in the snapshot's state where pages can be scanned.
        assert table["tenant-a"]["parked_instances"] == (1 if page_scan() else 0)
        assert table["tenant-b"]["instances"] >= 1  # the other model keeps its instances

        # From zero: activation loads nothing (the model is resident), the call makes one
        # instance and answers the same vector.
        again = await load(client, spec("tenant-a", PACKAGES / "minilm-engine"))
        assert set(again["load"]["phases"]) == {"activate"}
        a2 = await embed(client, "tenant-a", ["hello"])
        assert a2.json()["data"][0]["embedding"] == a.json()["data"][0]["embedding"]
        assert models.get("tenant-a").instances() == 1

        # A spec that changed is loaded again, not activated.
        changed = await load(client, spec("tenant-a", PACKAGES / "minilm-engine", max_batch=8))
        assert "warmup" in changed["load"]["phases"]

        r = await client.post("/admin/models/tenant-a/unload", headers=AUTH)
        assert r.status_code == 200
        assert (await embed(client, "tenant-a", ["hello"])).status_code == 404
        assert (await classify(client, "tenant-b")).status_code == 200


def test_one_models_timeout_leaves_the_other_serving(tmp_path: Path) -> None:
    asyncio.run(_one_models_timeout_leaves_the_other_serving(tmp_path))


async def _one_models_timeout_leaves_the_other_serving(tmp_path: Path) -> None:
    async with hosted() as (client, _):
        await load(client, spec("slow", slow_package(tmp_path), max_batch=512))
        await load(client, spec("steady", PACKAGES / "magika-engine"))
        long_texts = [f"sentence number {i} " + "word " * 240 for i in range(256)]

        timed_out = asyncio.create_task(embed(client, "slow", long_texts))
        during = [await classify(client, "steady") for _ in range(3)]
        r = await timed_out
        assert r.status_code == 504, r.text
        assert "deadline" in r.json()["error"]["message"]
        assert all(d.status_code == 200 for d in during)
        assert all(d.json()["outputs"][0]["data"] == ["shell"] for d in during)
        # The model that timed out serves again (its instance was replaced), and so does
        # the other.
        assert (await embed(client, "slow", ["short"])).status_code == 200
        assert (await classify(client, "steady")).status_code == 200


def test_memory_budget_evicts_the_least_recently_used_idle_model() -> None:
    asyncio.run(_memory_budget_evicts_the_least_recently_used_idle_model())


async def _memory_budget_evicts_the_least_recently_used_idle_model() -> None:
    async with hosted() as (client, models):
        await load(client, spec("old", PACKAGES / "magika-engine"))
        await load(client, spec("newer", PACKAGES / "magika-engine"))
        for name in ("old", "newer"):
            await client.post(f"/admin/models/{name}/release", headers=AUTH)
        await classify(client, "newer")  # used later than "old"
        models.budget_bytes = sum(r.memory_bytes for r in models.resident())
        await load(client, spec("big", PACKAGES / "minilm-engine"))
        assert "old" not in models.models and models.evicted >= 1
        assert "big" in models.models and models.models["big"].active
        assert (await classify(client, "old")).status_code == 404


def test_admin_refusals() -> None:
    asyncio.run(_admin_refusals())


async def _admin_refusals() -> None:
    async with hosted() as (client, _):
        s = spec("m1", PACKAGES / "magika-engine")
        body = s.model_dump_json(by_alias=True)
        r = await client.post("/admin/models/m1/load", content=body)
        assert r.status_code == 401
        r = await client.post(
            "/admin/models/m1/load", content=body, headers={"authorization": "Bearer x"}
        )
        assert r.status_code == 401
        r = await client.post("/admin/models/other/load", content=body, headers=AUTH)
        assert r.status_code == 400 and "names model" in r.json()["error"]
        r = await client.post("/admin/models/m1/load", content=b"{not json", headers=AUTH)
        assert r.status_code == 400
        r = await client.post(
            "/admin/models/m1/load", content=b"x" * (MAX_ADMIN_BODY + 1), headers=AUTH
        )
        assert r.status_code == 413
        r = await client.post("/admin/models/..%2f/load", content=body, headers=AUTH)
        assert r.status_code in (400, 404)
        r = await client.get("/admin/models/m1/load", headers=AUTH)
        assert r.status_code == 405
        native = ModelSpec.model_validate(
            {
                "name": "m1",
                "task": "classify",
                "artifacts": {"onnx": "x.onnx"},
                "runtimes": ["onnx"],
                "options": {"preprocess": "magika"},
            }
        )
        r = await client.post(
            "/admin/models/m1/load", content=native.model_dump_json(by_alias=True), headers=AUTH
        )
        assert r.status_code == 400 and "wasm" in r.json()["error"]
        assert (await client.post("/admin/models/m1/release", headers=AUTH)).status_code == 404
        assert (await client.get("/m/m1/v2/health/ready")).status_code == 404
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}


def test_preloaded_models_serve_without_a_supervisor() -> None:
    """A pod's host (``--preload``): ready once its models are resident; they hold no
    instances until called; one that fails to load is left out, the others serve."""

    async def run() -> None:
        config = load_config(PACKAGES / "models.yaml")
        models = HostedModels(Settings.from_env(), config.base_dir)
        broken = spec("broken", PACKAGES / "no-such-package")
        app = HostApp(models, TOKEN, [spec("p1", PACKAGES / "magika-engine"), broken])
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
                app._preloading = asyncio.create_task(app._load_all())
                assert (await client.get("/v2/health/ready")).status_code == 503
                await app._preloading
                assert (await client.get("/v2/health/ready")).status_code == 200
                assert models.get("p1").instances() == 0 and not models.get("p1").active
                r = await classify(client, "p1")
                assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["shell"]
                assert models.get("p1").instances() == 1
                assert (await classify(client, "broken")).status_code == 404
        finally:
            await models.close()

    asyncio.run(run())


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_unloading_the_last_model_of_a_snapshot_unmaps_it() -> None:
    """Two tenants share one snapshot; it stays mapped while either is resident and is
    unmapped with the last (before: the host kept every snapshot it ever mapped)."""
    import gc

    async def run() -> None:
        async with hosted() as (client, models):
            await load(client, spec("mag-a", PACKAGES / "magika-engine"))
            await load(client, spec("mag-b", PACKAGES / "magika-engine"))
            guest = models.get("mag-a").runtime._guest  # type: ignore[attr-defined]
            path = guest.snapshot.path
            del guest
            assert _mapped(path)
            await client.post("/admin/models/mag-a/unload", headers=AUTH)
            gc.collect()
            assert _mapped(path)  # mag-b still serves from it
            assert (await classify(client, "mag-b")).status_code == 200
            await client.post("/admin/models/mag-b/unload", headers=AUTH)
            gc.collect()
            assert not _mapped(path)

    asyncio.run(run())
