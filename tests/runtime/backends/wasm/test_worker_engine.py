"""Real worker processes serving the pure-compute engine's packages (wasm runtime,
``compute`` ABI): /v1/embeddings through the openai client, OIP v2 infer through
tritonclient, and a client mistake that leaves the worker serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import WorkerProcess, start_worker
from tests.runtime.backends.test_magika_features import _inputs as magika_inputs
from tests.runtime.backends.wasm.sentences import SENTENCES

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[4] / "wasm-modules" / "packages" / "models.yaml"


@pytest.fixture(scope="module")
def engine_workers(worker_logs: Path) -> Iterator[dict[str, WorkerProcess]]:
    workers = {
        name: start_worker(name, worker_logs, "--config", str(MODELS), "--runtime", "wasm")
        for name in ("minilm-engine", "magika-engine")
    }
    yield workers
    for worker in workers.values():
        worker.stop_cleanly()


def test_embeddings_route(engine_workers: dict[str, WorkerProcess]) -> None:
    worker = engine_workers["minilm-engine"]
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(model="minilm-engine", input=SENTENCES[:32])
    vectors = np.array([d.embedding for d in got.data])
    assert vectors.shape == (32, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one = client.embeddings.create(model="minilm-engine", input=SENTENCES[5])
    assert float(np.dot(one.data[0].embedding, vectors[5])) >= 0.99999
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.embeddings.create(model="minilm-engine", input="word " * 400)
    again = client.embeddings.create(model="minilm-engine", input=SENTENCES[5])
    assert again.data[0].embedding == one.data[0].embedding


def test_magika_infer_route(engine_workers: dict[str, WorkerProcess]) -> None:
    magika = pytest.importorskip("magika")
    oracle = magika.Magika()
    worker = engine_workers["magika-engine"]
    files = magika_inputs()
    names = ["script.py", "page.html", "image.png", "archive.zip", "doc.pdf", "empty"]
    content = triton.InferInput("content", [len(names)], "BYTES")
    content.set_data_from_numpy(np.array([files[n] for n in names], dtype=object))
    with triton.InferenceServerClient(worker.url.removeprefix("http://")) as tc:
        result = tc.infer("magika-engine", [content])
        labels = [x.decode() for x in result.as_numpy("label")]
        assert labels == [
            str(oracle.identify_bytes(files[n]).prediction.output.label) for n in names
        ]
        wrong = triton.InferInput("bytes", [1, 2048], "INT32")
        wrong.set_data_from_numpy(np.zeros((1, 2048), np.int32))
        with pytest.raises(InferenceServerException, match="content"):
            tc.infer("magika-engine", [wrong])
        assert tc.is_model_ready("magika-engine")
