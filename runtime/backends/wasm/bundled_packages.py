"""The WASM packages of the bundled models, as ``py://`` artifact references.

``runtime/spec/bundled.yaml`` names each bundled model's WASM form as
``py://runtime.backends.wasm.bundled_packages:<function>``: a reference that does not
depend on where the config is read from or copied to (a relative path would), and that
lives in every worker image, as ``wasm-modules/`` does (``knative/images/``). Each
function returns the package folder in this checkout's ``wasm-modules/packages/``.
"""

from __future__ import annotations

from pathlib import Path

from runtime.backends.wasm.build import guests_dir

__all__ = ["gemma3_wasi_nn", "magika_engine", "minilm_engine", "smollm2_wasi_nn"]


def _package(name: str) -> Path:
    return guests_dir() / "packages" / name


def smollm2_wasi_nn() -> Path:
    return _package("smollm2-wasi-nn")


def gemma3_wasi_nn() -> Path:
    return _package("gemma3-wasi-nn")


def minilm_engine() -> Path:
    return _package("minilm-engine")


def magika_engine() -> Path:
    return _package("magika-engine")
