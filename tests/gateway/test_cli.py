"""The ``edgeinfer`` command line: names from DESIGN.md, clear errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from runtime.backends.devices import cuda_available
from tests.conftest import ROOT

runner = CliRunner()


def test_models_lists_the_bundled_models() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("smollm2", "gemma3-270m", "minilm", "magika"):
        assert name in result.output


def test_models_reports_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "x",
                        "task": "chat",
                        "artifacts": {"gguf": "a.gguf"},
                        "runtimes": ["llama"],
                        "scaling": {"window": "1s"},
                    }
                ]
            }
        )
    )
    result = runner.invoke(app, ["models", "--config", str(bad)])
    assert result.exit_code == 2
    assert "model 'x'" in result.output and "scaling.window" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "nope"], "model 'nope' is not in"),
        (["--model", "smollm2", "--runtime", "onnx"], "does not list runtime 'onnx'"),
    ],
)
def test_worker_refuses_before_serving(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, ["worker", *args])
    assert result.exit_code == 2
    assert fragment in result.output


@pytest.mark.skipif(cuda_available(), reason="this host has a CUDA device")
def test_worker_on_cuda_without_a_gpu_is_a_clear_error() -> None:
    result = runner.invoke(app, ["worker", "--model", "minilm", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device" in result.output


def test_worker_exits_1_when_its_model_cannot_load(tmp_path: Path) -> None:
    # A file that exists but is not a GGUF model: the config is valid, the load fails.
    (tmp_path / "broken.gguf").write_bytes(b"not a model")
    config = tmp_path / "m.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "broken",
                        "task": "completion",
                        "artifacts": {"gguf": "broken.gguf"},
                        "runtimes": ["llama"],
                    }
                ]
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "worker",
            "--model",
            "broken",
            "--config",
            str(config),
            "--port",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "broken" in proc.stderr and "failed to load" in proc.stderr
