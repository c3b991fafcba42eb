"""Profiles: the artifact hash changes exactly when what the runtime loads changes, and
what a profile says (p95 under load, parallelism, a CUDA estimate, the store), as tables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime.placement.profiles import (
    LoadPoint,
    Profile,
    ProfileStore,
    artifact_hash,
    estimate_cuda,
)
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import Device


def _spec(artifact: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": "m", "task": "tensor", "artifacts": {"wasm": artifact}, "runtimes": ["wasm"]}
    )


def test_a_wasm_package_is_hashed_with_the_model_files_it_names(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "guest.wasm").write_bytes(b"\0asm\1\0\0\0")
    weights = tmp_path / "elsewhere" / "model.onnx"
    weights.parent.mkdir()
    weights.write_bytes(b"weights v1")
    (package / "edgeinfer-wasm.yaml").write_text(
        f"abi: compute\nguest: guest.wasm\nfiles: {{model: {weights}}}\n"
    )
    spec, cache = _spec(str(package)), tmp_path / "cache"
    first = artifact_hash(spec, RuntimeName.WASM, tmp_path, cache)
    assert artifact_hash(spec, RuntimeName.WASM, tmp_path, cache) == first
    weights.write_bytes(b"weights v2")  # outside the folder, named by the manifest
    os.utime(weights, ns=(1, 1))
    second = artifact_hash(spec, RuntimeName.WASM, tmp_path, cache)
    assert second != first
    (package / "guest.wasm").write_bytes(b"\0asm\1\0\0\0\0")
    assert artifact_hash(spec, RuntimeName.WASM, tmp_path, cache) not in (first, second)


# -- what a profile says, as tables -------------------------------------------------


def measured(*points: tuple[int, float, float, float], device: str = "cpu") -> Profile:
    """A CPU profile with (concurrency, p50 ms, p95 ms, throughput rps) points."""
    return Profile(
        model="m",
        runtime=RuntimeName.ONNX,
        device=Device(device),
        artifact_hash="h" * 64,
        cold_start={"spawn": 0.25, "load": 1.5, "warmup": 0.25},
        points=tuple(
            LoadPoint(concurrency=c, requests=10, p50_ms=p50, p95_ms=p95, throughput_rps=rps)
            for c, p50, p95, rps in points
        ),
    )


ONE = measured((1, 10.0, 20.0, 90.0))
THREE = measured((1, 10.0, 20.0, 90.0), (4, 15.0, 40.0, 250.0), (8, 30.0, 80.0, 260.0))


@pytest.mark.parametrize(
    ("profile", "concurrency", "p95"),
    [
        (ONE, 0.5, 20.0),  # below the first point: the first point's p95
        (ONE, 1, 20.0),
        (ONE, 3, 60.0),  # one point: p95 grows with the queue
        (THREE, 1, 20.0),
        (THREE, 2.5, 30.0),  # halfway between 1 and 4
        (THREE, 4, 40.0),
        (THREE, 6, 60.0),  # halfway between 4 and 8
        (THREE, 12, 120.0),  # beyond the last point: the last slope carries on
        # points given out of order are sorted first
        (measured((4, 15.0, 40.0, 250.0), (1, 10.0, 20.0, 90.0)), 2.5, 30.0),
        # a last slope that falls never makes p95 fall below the last point
        (measured((1, 10.0, 50.0, 90.0), (2, 10.0, 40.0, 150.0)), 10, 40.0),
    ],
)
def test_p95_at(profile: Profile, concurrency: float, p95: float) -> None:
    assert profile.p95_at(concurrency) == pytest.approx(p95)


@pytest.mark.parametrize(
    ("profile", "key", "cold", "service", "max_rps", "parallelism"),
    [
        (ONE, "onnx-cpu", 2.0, 10.0, 90.0, 1.0),  # 90 rps x 10 ms < 1: at least 1
        (THREE, "onnx-cpu", 2.0, 10.0, 260.0, 2.6),
        (measured((1, 100.0, 100.0, 40.0), device="cuda"), "onnx-cuda", 2.0, 100.0, 40.0, 4.0),
    ],
)
def test_what_a_profile_derives(
    profile: Profile, key: str, cold: float, service: float, max_rps: float, parallelism: float
) -> None:
    assert profile.key == key
    assert profile.cold_start_s == pytest.approx(cold)
    assert profile.service_ms == service
    assert profile.max_throughput_rps == max_rps
    assert profile.parallelism == pytest.approx(parallelism)


@pytest.mark.parametrize(
    ("speedup", "init_s", "p50", "rps", "cold"),
    [(1.0, 0.0, 10.0, 90.0, 2.0), (5.0, 2.0, 2.0, 450.0, 4.0), (10.0, 0.5, 1.0, 900.0, 2.5)],
)
def test_estimate_cuda(speedup: float, init_s: float, p50: float, rps: float, cold: float) -> None:
    got = estimate_cuda(ONE, speedup=speedup, init_s=init_s, gpu_memory_mib=512.0)
    assert (got.device, got.key, got.source) == (Device.CUDA, "onnx-cuda", "estimated")
    assert got.service_ms == pytest.approx(p50)
    assert got.max_throughput_rps == pytest.approx(rps)
    assert got.cold_start_s == pytest.approx(cold)
    assert got.gpu_memory_mib == 512.0 and "estimated from the onnx-cpu profile" in got.note
    assert ONE.device is Device.CPU  # the measured profile is left as it was


@pytest.mark.parametrize(
    ("stored", "asked", "found"),
    [
        ((("cpu", "a"),), "a", ["onnx-cpu"]),
        ((("cpu", "a"), ("cuda", "a")), "a", ["onnx-cpu", "onnx-cuda"]),
        ((("cpu", "a"),), "b", []),  # the artifact changed: the profile is stale
        ((("cuda", "a"),), "a", ["onnx-cuda"]),
    ],
)
def test_the_store_finds_profiles_of_the_current_artifacts(
    tmp_path: Path, stored: tuple[tuple[str, str], ...], asked: str, found: list[str]
) -> None:
    store = ProfileStore(tmp_path)
    for device, digest in stored:
        store.put(
            measured((1, 10.0, 20.0, 90.0), device=device).model_copy(
                update={"artifact_hash": digest * 64}
            )
        )
    spec = ModelSpec.model_validate(
        {
            "name": "m",
            "task": "embedding",
            "artifacts": {"onnx": "m.onnx"},
            "runtimes": ["onnx"],
            "tokenizer": "t.json",
        }
    )
    got = store.for_model(spec, tmp_path, hashes={RuntimeName.ONNX: asked * 64})
    assert sorted(p.key for p in got) == found


def test_a_profile_of_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValidationError, match="device"):
        Profile.model_validate({**ONE.model_dump(), "device": "tpu"})
