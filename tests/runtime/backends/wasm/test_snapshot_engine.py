"""Snapshots of the real engine (all-MiniLM-L6-v2, Magika) through the ``wasm`` runtime:
an instance from the snapshot answers bit for bit what a freshly loaded instance does,
pooled or with ``isolation: request``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from runtime.backends.registry import Runtime, create_runtime
from runtime.backends.wasm.abi.compute import ComputeGuest
from runtime.backends.wasm.engine.reactor import EnginePool
from runtime.backends.wasm.request_pool import RequestPool
from runtime.settings import Settings
from runtime.spec.model import load_config
from runtime.spec.types import Tensor
from tests.runtime.backends.test_magika_features import _inputs as magika_inputs
from tests.runtime.backends.wasm.sentences import SENTENCES

pytestmark = pytest.mark.slow

PACKAGES = Path(__file__).resolve().parents[4] / "wasm-modules" / "packages"
VARIANTS = {
    "fresh": {"snapshot": False},
    "snapshot": {},
    "request": {"isolation": "request"},
}


def _runtimes(
    model: str, task_options: dict[str, object], folder: Path, settings: Settings
) -> Iterator[dict[str, Runtime]]:
    manifest = yaml.safe_load((PACKAGES / model / "edgeinfer-wasm.yaml").read_text())
    models = []
    for variant, options in VARIANTS.items():
        package = folder / f"{model}-{variant}"
        package.mkdir()
        data = {**manifest, "options": {**manifest.get("options", {}), **options}}
        (package / "edgeinfer-wasm.yaml").write_text(yaml.safe_dump(data))
        models.append(
            {
                "name": f"{model}-{variant}",
                "task": "embedding" if "minilm" in model else "classify",
                "artifacts": {"wasm": package.name},
                "runtimes": ["wasm"],
                "options": {**task_options, "parallel": 2},
            }
        )
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    config = load_config(folder / "models.yaml")
    loaded: dict[str, Runtime] = {}
    try:
        for variant in VARIANTS:
            spec = config.get(f"{model}-{variant}")
            assert spec is not None
            rt = create_runtime(spec, runtime="wasm", settings=settings, base_dir=folder)
            asyncio.run(rt.load())
            loaded[variant] = rt
        yield loaded
    finally:
        for rt in loaded.values():
            asyncio.run(rt.unload())


@pytest.fixture(scope="module")
def minilm(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> Iterator[dict[str, Runtime]]:
    folder = tmp_path_factory.mktemp("minilm")
    yield from _runtimes("minilm-engine", {"max_input_tokens": 256}, folder, settings)


@pytest.fixture(scope="module")
def magika(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> Iterator[dict[str, Runtime]]:
    folder = tmp_path_factory.mktemp("magika")
    yield from _runtimes("magika-engine", {"preprocess": "magika"}, folder, settings)


def _pool(rt: Runtime) -> EnginePool | RequestPool | None:
    guest = rt._ready()  # type: ignore[attr-defined]
    assert isinstance(guest, ComputeGuest)
    return guest.pool


def test_the_variants_are_what_they_claim(minilm: dict[str, Runtime]) -> None:
    fresh, snap, request = (_pool(minilm[v]) for v in VARIANTS)
    assert isinstance(fresh, EnginePool)
    assert {e.name for e in fresh.template.module.exports} >= {"ei_init", "_initialize"}
    assert isinstance(snap, EnginePool)
    assert "ei_init" not in {e.name for e in snap.template.module.exports}
    assert isinstance(request, RequestPool)
    assert "snapshot" in minilm["snapshot"].report.phases
    assert "snapshot" not in minilm["fresh"].report.phases


def test_minilm_from_the_snapshot_is_bitwise_the_freshly_loaded_engine(
    minilm: dict[str, Runtime],
) -> None:
    vectors = {v: asyncio.run(rt.embed(SENTENCES)).vectors for v, rt in minilm.items()}
    assert vectors["fresh"].shape == (len(SENTENCES), 384)
    assert np.array_equal(vectors["snapshot"], vectors["fresh"])
    assert np.array_equal(vectors["request"], vectors["fresh"])
    request = _pool(minilm["request"])
    assert isinstance(request, RequestPool) and request.calls >= 2  # an instance per call


def test_magika_from_the_snapshot_is_bitwise_the_freshly_loaded_engine(
    magika: dict[str, Runtime],
) -> None:
    files = magika_inputs()
    content = Tensor("content", "BYTES", np.array(list(files.values()), dtype=object))
    out = {
        v: {t.name: t.data for t in asyncio.run(rt.infer([content]))} for v, rt in magika.items()
    }
    for variant in ("snapshot", "request"):
        assert list(out[variant]["label"]) == list(out["fresh"]["label"])
        assert np.array_equal(
            out[variant]["score"].astype(np.float64), out["fresh"]["score"].astype(np.float64)
        )
    assert len(set(out["fresh"]["label"].tolist())) >= 5  # real, varied answers
