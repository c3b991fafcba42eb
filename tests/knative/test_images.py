"""The worker images' Dockerfiles (which cannot be built here: no Docker engine) kept in
step with pyproject.toml and .ci/setup."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "knative" / "images"
DOCKERFILES = sorted(IMAGES.glob("Dockerfile.*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUP = (ROOT / ".ci" / "setup").read_text()


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_follows_the_project(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "NOT BUILT HERE" in text.split("\n\n")[0], "the header must say it was never built"
    # The model packages installed without dependencies, exactly as .ci/setup pins them.
    no_deps = re.compile(r'--no-deps ("[^"]+"(?: "[^"]+")*)')
    (setup_pins,) = no_deps.findall(SETUP)
    assert no_deps.findall(text) == [setup_pins]
    # The project itself is installed (editable, as .ci/setup does), so its
    # dependencies come from pyproject.toml.
    assert re.search(r"pip install --no-cache-dir -e \.\s*$", text, re.M)
    assert "-e '.[test]'" in SETUP or "-e ." in SETUP
    assert "GGML_NATIVE=OFF" in text
    # A Python the project supports.
    floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    versions = re.findall(r"python(?::|)(3\.\d+)", text)
    assert versions and all(
        tuple(map(int, v.split("."))) >= tuple(map(int, floor.split("."))) for v in versions
    )
    # Every package pyproject ships is copied in.
    copied = set(re.findall(r"^COPY (\S+) \1$", text, re.M))
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.removesuffix("*") for p in found}
    assert packages <= copied
    for path in copied:
        assert (ROOT / path).exists(), f"{dockerfile.name} copies {path}, which does not exist"
    assert 'ENTRYPOINT ["edgeinfer"]' in text


def test_cuda_image_swaps_onnxruntime_at_the_same_bound() -> None:
    text = (IMAGES / "Dockerfile.cuda").read_text()
    deps = PYPROJECT["project"]["dependencies"]
    (ort,) = [d for d in deps if re.match(r"onnxruntime\b(?!-)", d)]
    assert f'"{ort.replace("onnxruntime", "onnxruntime-gpu", 1)}"' in text
    assert "pip uninstall -y onnxruntime" in text
    assert "-DGGML_CUDA=on" in text
