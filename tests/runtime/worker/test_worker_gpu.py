"""The CUDA paths, on a machine that has an NVIDIA GPU; skipped (with the reason) elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.backends.devices import cuda_available
from tests.conftest import start_worker
from tests.runtime.worker.conftest import client

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not cuda_available(), reason="no CUDA device on this host"),
]


def test_llama_offloads_to_the_gpu(tmp_path: Path) -> None:
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has no GPU offload (CMAKE_ARGS=-DGGML_CUDA=on)")
    worker = start_worker("smollm2", tmp_path, "--device", "cuda")
    try:
        got = client(worker).completions.create(
            model="smollm2", prompt="1, 2, 3,", max_tokens=8, temperature=0
        )
        assert got.usage is not None and got.usage.completion_tokens == 8
        assert "on llama/cuda" in worker.output()
    finally:
        worker.stop_cleanly()


def test_onnx_on_the_cuda_provider(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (onnxruntime-gpu)")
    worker = start_worker("minilm", tmp_path, "--device", "cuda")
    try:
        got = client(worker).embeddings.create(model="minilm", input=["a GPU embedding"])
        assert len(got.data[0].embedding) == 384
        assert "on onnx/cuda" in worker.output()
    finally:
        worker.stop_cleanly()
