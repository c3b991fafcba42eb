"""Every bundled model's WASM form (runtime/spec/bundled.yaml) served by a real worker
with ``--runtime wasm``, answering as its native form does: SmolLM2 and Gemma 3 through
the wasi-nn GGML guest, MiniLM and Magika on our engine, from the same files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import WorkerProcess, running_worker
from tests.runtime.worker.conftest import chat_against_raw

pytestmark = pytest.mark.slow

SCRIPT = "#!/bin/sh\necho hello\n"
PYTHON = (
    "import os\n\ndef main():\n    print(os.getcwd())\n\nif __name__ == '__main__':\n    main()\n"
)
SENTENCES = ["The cat sits on the mat.", "Edge inference in WebAssembly."]


def _wasm(model: str, logs: Path) -> Iterator[WorkerProcess]:
    return running_worker(model, logs, "--runtime", "wasm", ready_timeout=600)


@pytest.fixture(scope="module")
def smollm2_wasm(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _wasm("smollm2", worker_logs)


@pytest.fixture(scope="module")
def gemma_wasm(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _wasm("gemma3-270m", worker_logs)


@pytest.fixture(scope="module")
def minilm_wasm(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _wasm("minilm", worker_logs)


@pytest.fixture(scope="module")
def magika_wasm(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _wasm("magika", worker_logs)


def _post(worker: WorkerProcess, path: str, body: dict[str, object]) -> dict[str, object]:
    r = httpx.post(f"{worker.url}{path}", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_smollm2_wasm_form_chats_as_llama_cpp(smollm2_wasm: WorkerProcess, raw_llama) -> None:  # type: ignore[no-untyped-def]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat_against_raw(smollm2_wasm, "smollm2", question, raw_llama)


def test_gemma_wasm_form_completes_as_the_native_form(
    gemma_wasm: WorkerProcess, worker_logs: Path
) -> None:
    body = {"model": "gemma3-270m", "prompt": "The capital of France is", "max_tokens": 8}
    body |= {"temperature": 0}
    got = _post(gemma_wasm, "/v1/completions", body)
    for native in running_worker("gemma3-270m", worker_logs, "--runtime", "llama"):
        want = _post(native, "/v1/completions", body)
        assert got["choices"][0]["text"] == want["choices"][0]["text"]  # type: ignore[index]
        assert got["usage"] == want["usage"]


def test_minilm_wasm_form_embeds_as_onnxruntime(
    minilm_wasm: WorkerProcess, minilm_worker: WorkerProcess
) -> None:
    body = {"model": "minilm", "input": SENTENCES}
    got = _post(minilm_wasm, "/v1/embeddings", body)["data"]
    want = _post(minilm_worker, "/v1/embeddings", body)["data"]
    for a, b in zip(got, want, strict=True):  # type: ignore[call-overload]
        va, vb = np.asarray(a["embedding"]), np.asarray(b["embedding"])
        assert va.shape == (384,)
        assert float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb)) > 0.999


def test_magika_wasm_form_classifies_as_onnxruntime(
    magika_wasm: WorkerProcess, magika_worker: WorkerProcess
) -> None:
    body = {
        "inputs": [{"name": "content", "shape": [2], "datatype": "BYTES", "data": [SCRIPT, PYTHON]}]
    }
    got = _post(magika_wasm, "/v2/models/magika/infer", body)["outputs"]
    want = _post(magika_worker, "/v2/models/magika/infer", body)["outputs"]
    labels = {o["name"]: o["data"] for o in got}  # type: ignore[attr-defined]
    assert labels["label"] == {o["name"]: o["data"] for o in want}["label"]  # type: ignore[attr-defined]
    assert labels["label"] == ["shell", "python"]
