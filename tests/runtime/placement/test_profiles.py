"""Profile keys: the artifact hash changes exactly when what the runtime loads changes."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.placement.profiles import artifact_hash
from runtime.spec.model import ModelSpec, RuntimeName


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
