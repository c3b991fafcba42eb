"""bench/gpu_check.py: its dry run (every step present, each passed or skipped with a
reason; a CLI that lost a flag fails it), the bundle mechanics it ships to the GPU
machine (trim, split, rejoin with sha256) and its checks of a plan."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_bundle as gb  # noqa: E402
import gpu_plan as gp  # noqa: E402
import gpu_steps as gs  # noqa: E402

STEPS = ["prepare", "build", "worker", "profile_plan", "pack", "bridge", "json"]

# A FAKE `edgeinfer`: the real command line with the worker's --device option removed,
# to show that the dry run notices a flag the check relies on going missing.
# A FAKE edgeinfer: the real CLI, except that its worker has lost --device.
FAKE_CLI = """
import sys

from gateway.cli import app

if sys.argv[1:2] == ["worker"] and "--help" in sys.argv:
    print("usage: edgeinfer worker --model MODEL [--config CONFIG] [--port PORT]")
    raise SystemExit(0)
app()
"""


def dry_run(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--dry-run",
            "--bundles",
            str(tmp_path / "none"),
            *list(extra),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr
    return out.returncode, json.loads(lines[-1])


@pytest.mark.slow
def test_dry_run_passes_with_every_step_passed_or_skipped(tmp_path: Path) -> None:
    code, doc = dry_run(tmp_path)
    assert [s["name"] for s in doc["steps"]] == STEPS
    assert doc["mode"] == "dry-run" and doc["pass"] is True and code == 0, doc
    for step in doc["steps"]:
        assert step["status"] in ("passed", "skipped"), step
        if step["status"] == "skipped":
            assert "GPU" in step["reason"], step
            assert step["checks"], f"{step['name']}: skipped without checking anything"
    by_name = {s["name"]: s for s in doc["steps"]}
    assert by_name["profile_plan"]["figures"]["dry_plan_tiers"] == {
        "smollm2": "llama-cuda",
        "smollm2-b": "llama-cuda",
    }
    assert any("--device cuda" in c for c in by_name["worker"]["commands"])
    assert doc["wall_s"] <= doc["limit_s"]


@pytest.mark.slow
def test_dry_run_fails_when_the_worker_loses_its_device_flag(tmp_path: Path) -> None:
    fake = tmp_path / "fake_cli.py"
    fake.write_text(FAKE_CLI)
    code, doc = dry_run(tmp_path, "--cli", f"{sys.executable} {fake}")
    worker = next(s for s in doc["steps"] if s["name"] == "worker")
    assert worker["status"] == "failed" and "--device" in worker["reason"], worker
    assert doc["pass"] is False and "worker" in doc["failed"] and code == 1


def test_trim_keeps_what_a_cuda_build_needs(tmp_path: Path) -> None:
    top = gs.fake_sdist(tmp_path)
    kept = gb.trim_source(top)
    assert kept["backends"] == ["ggml-blas", "ggml-cpu", "ggml-cuda", "ggml-rpc"]
    assert kept["tools"] == ["mtmd"]
    assert not (top / ".git").exists() and not (top / "tests").exists()
    assert not (top / "vendor/llama.cpp/gguf-py").exists()
    assert (top / "vendor/llama.cpp/src/llama.cpp").is_file()
    with pytest.raises(ValueError, match="not a llama-cpp-python source tree"):
        gb.trim_source(tmp_path / "elsewhere")


def test_split_and_rejoin_check_every_part(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000  # 1 024 000 bytes
    src = tmp_path / "model.whl"
    src.write_bytes(data)
    parts = gb.split_file(src, [600_000, 999_999], tmp_path / "parts")
    assert [p.size for p in parts] == [600_000, 424_000]
    whole = hashlib.sha256(data).hexdigest()
    paths = [tmp_path / "parts" / p.name for p in parts]
    joined = gb.rejoin(paths, parts, whole, tmp_path / "joined.whl")
    assert joined.read_bytes() == data
    # A part changed in transit is named, and nothing is left joined.
    bad = bytearray(paths[1].read_bytes())
    bad[10] ^= 1
    paths[1].write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"model\.whl\.part1: sha256"):
        gb.rejoin(paths, parts, whole, tmp_path / "again.whl")
    assert not (tmp_path / "again.whl").exists()


def test_bundles_stay_under_the_budget() -> None:
    layout = gb.plan_bundles({"src.tar.gz": 4, "wheels/a.whl": 2}, {"m.whl": 15}, budget=10)
    # 21 bytes need three bundles of 10; evened out, each takes at most 7.
    assert layout == [
        [("src.tar.gz", 4), ("wheels/a.whl", 2), ("m.whl", 1)],
        [("m.whl", 7)],
        [("m.whl", 7)],
    ]
    assert all(sum(n for _, n in b) <= 10 for b in layout)
    assert gb.plan_bundles({"src": 8}, {"m": 4}, budget=10) == [[("src", 8)], [("m", 4)]]
    with pytest.raises(ValueError, match="over the 5-byte budget"):
        gb.plan_bundles({"src.tar.gz": 6}, {}, budget=5)


def _plan(cuda_profile: str, cuda_gpu: int | None, chosen: str = "cuda") -> dict[str, Any]:
    def row(device: str, profile: str, gpu: int | None, cold: float, p95: float) -> dict[str, Any]:
        return {
            "tier": f"llama-{device}",
            "device": device,
            "profile": profile,
            "gpu": gpu,
            "memory_mib": 420.0,
            "cold_start_ms": cold,
            "predicted_p95_ms": p95,
            "verdict": "chosen" if device == chosen else "rejected",
            "reason": "why",
        }

    return {
        "models": [
            {
                "model": m,
                "candidates": [
                    row("cpu", "measured", None, 200.0, 100.0),
                    row("cuda", cuda_profile, cuda_gpu if i == 0 else 0, 1500.0, 40.0),
                ],
            }
            for i, m in enumerate(gp.PACKED)
        ]
    }


def test_plan_checks_want_measured_gpu_rows_packed_on_one_gpu() -> None:
    good = _plan("measured", 0)
    assert gp.cuda_problems(good, gp.PACKED, measured=True) == []
    assert gp.packing_problems(good, gp.PACKED) == []
    estimated = gp.cuda_problems(_plan("estimated", 0), gp.PACKED, measured=True)
    assert len(estimated) == 2 and "'estimated', not measured" in estimated[0]
    assert gp.cuda_problems(_plan("estimated", 0), gp.PACKED, measured=False) == []
    on_cpu = gp.cuda_problems(_plan("measured", 0, chosen="cpu"), gp.PACKED, measured=True)
    assert any("placed on llama-cpu" in p for p in on_cpu)
    assert "not packed on one GPU" in gp.packing_problems(_plan("measured", 1), gp.PACKED)[-1]


def test_bridge_goal_lies_between_the_cpu_and_gpu_first_answers() -> None:
    goal, why = gp.bridge_goal_ms(_plan("measured", 0), "smollm2")
    assert goal == (300.0 + 1540.0) / 2 and why == ""
    fast_gpu = _plan("measured", 0)
    for c in fast_gpu["models"][0]["candidates"]:
        c["cold_start_ms"] = 100.0 if c["device"] == "cuda" else 200.0
    goal, why = gp.bridge_goal_ms(fast_gpu, "smollm2")
    assert goal is None and "no cold start to bridge" in why


def test_cuda_arch_from_nvidia_smi() -> None:
    assert gs.cuda_arch("9.0\n") == "90"
    assert gs.cuda_arch("8.9\n8.9\n") == "89"
    with pytest.raises(ValueError):
        gs.cuda_arch("N/A")
