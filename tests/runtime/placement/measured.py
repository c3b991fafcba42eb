"""Profiles made by hand for the policy's tests: one load point, shaped like what
``edgeinfer profile`` measures."""

from __future__ import annotations

from runtime.placement.profiles import LoadPoint, Profile
from runtime.spec.model import RuntimeName


def one_point_profile(
    model: str,
    runtime: str,
    *,
    p50: float,
    cold: float,
    memory: float,
    spawn: float = 0.2,
    cores: int = 1,
    device: str = "cpu",
) -> Profile:
    """A profile of ``p50`` ms per request alone, ``cold`` s from zero (``spawn`` of
    it before the load), ``memory`` MiB held."""
    return Profile(
        model=model,
        runtime=RuntimeName(runtime),
        device=device,
        artifact_hash="x",
        cold_start={"spawn": spawn, "load": cold - spawn, "warmup": 0.0},
        points=(
            LoadPoint(
                concurrency=1,
                requests=16,
                p50_ms=p50,
                p95_ms=p50 * 1.1,
                throughput_rps=1000 / p50,
                tokens_per_s=70.0 if runtime != "onnx" else None,
            ),
        ),
        memory_mib=memory,
        rss_mib=memory + 150,
        cpu_cores=cores,
    )
