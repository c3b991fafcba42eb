"""Real worker processes serving MiniLM (embeddings) and Magika (OIP v2 classify) on the
onnx runtime, driven by the official ``openai`` client and by ``tritonclient.http``."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import WorkerProcess
from tests.runtime.backends.test_bert_onnx import MODEL_DIR, SENTENCES, _feeds, reference_embeddings
from tests.runtime.worker.conftest import client

pytestmark = pytest.mark.slow


def test_embeddings_match_the_fp32_reference(minilm_worker: WorkerProcess) -> None:
    got = client(minilm_worker).embeddings.create(model="minilm", input=SENTENCES)
    vectors = np.array([d.embedding for d in got.data])
    feeds = _feeds(SENTENCES)
    want = reference_embeddings(
        MODEL_DIR, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"]
    )
    cosine = (
        (vectors * want).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(want, axis=1)
    )
    assert vectors.shape == (len(SENTENCES), 384)
    assert cosine.min() >= 0.9999, cosine
    assert [d.index for d in got.data] == list(range(len(SENTENCES)))
    assert got.usage.prompt_tokens == int(feeds["attention_mask"].sum())


def test_float_and_base64_encodings_agree(minilm_worker: WorkerProcess) -> None:
    body = {"model": "minilm", "input": ["a small test"]}
    floats = httpx.post(f"{minilm_worker.url}/v1/embeddings", json=body).json()
    b64 = httpx.post(
        f"{minilm_worker.url}/v1/embeddings", json={**body, "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], rtol=1e-6)


def test_embeddings_through_oip(minilm_worker: WorkerProcess) -> None:
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"first", b"second"], dtype=object))
    with triton.InferenceServerClient(minilm_worker.url.removeprefix("http://")) as tc:
        result = tc.infer("minilm", [text])
    vectors = result.as_numpy("embedding")
    direct = client(minilm_worker).embeddings.create(model="minilm", input=["first", "second"])
    np.testing.assert_allclose(vectors, [d.embedding for d in direct.data], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "minilm", "input": "word " * 400}, 400, "takes at most 256 tokens"),
        ({"model": "minilm", "input": ""}, 400, "must not be empty"),
        ({"model": "minilm", "input": [[101, 102]]}, 400, "token arrays are not supported"),
        ({"model": "minilm", "input": ["x"] * 300}, 400, "at most 256"),
        ({"model": "minilm", "input": "x", "dimensions": 128}, 400, "384-dimensional"),
        ({"model": "other", "input": "x"}, 404, "is not served here"),
        ({"input": "x"}, 400, "field 'model'"),
    ],
)
def test_bad_embedding_requests(
    minilm_worker: WorkerProcess, body: dict[str, object], status: int, fragment: str
) -> None:
    r = httpx.post(f"{minilm_worker.url}/v1/embeddings", json=body)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]
    assert client(minilm_worker).embeddings.create(model="minilm", input="still up").data


def test_chat_on_an_embedding_model(minilm_worker: WorkerProcess) -> None:
    with pytest.raises(openai.BadRequestError, match="does not chat"):
        client(minilm_worker).chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hi"}]
        )


FILES = {
    "python": b"import os\n\ndef main():\n    print(os.getcwd())\n\nif __name__ == '__main__':\n"
    b"    main()\n",
    "json": b'{"name": "edgeinfer", "version": [0, 1, 0], "models": {"a": 1, "b": null}}\n',
    "html": b"<!DOCTYPE html>\n<html><head><title>t</title></head><body><p>Hello</p></body>"
    b"</html>\n",
    "empty": b"",
}


def magika_reference(content: bytes) -> tuple[str, float]:
    from magika import Magika

    result = Magika().identify_bytes(content)
    return str(result.prediction.output.label), float(result.prediction.score)


@pytest.mark.parametrize("binary", [True, False])
def test_magika_through_tritonclient(magika_worker: WorkerProcess, binary: bool) -> None:
    names = list(FILES)
    content = triton.InferInput("content", [len(names)], "BYTES")
    content.set_data_from_numpy(
        np.array([FILES[n] for n in names], dtype=object), binary_data=binary
    )
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("score", binary_data=binary),
    ]
    with triton.InferenceServerClient(magika_worker.url.removeprefix("http://")) as tc:
        assert tc.is_server_live() and tc.is_model_ready("magika")
        meta = tc.get_model_metadata("magika")
        result = tc.infer("magika", [content], outputs=outputs)
    assert {i["name"] for i in meta["inputs"]} == {"content", "bytes"}
    # tritonclient gives bytes for binary BYTES outputs and str for JSON ones.
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    scores = result.as_numpy("score")
    for name, label, score in zip(names, labels, scores, strict=True):
        want_label, want_score = magika_reference(FILES[name])
        assert label == want_label
        # Batched, multi-threaded kernels round differently from magika's one-file runs.
        assert score == pytest.approx(want_score, abs=1e-3)
    assert labels[0] == "python" and labels[2] == "html" and labels[3] == "empty"


def test_magika_raw_tensor_path(magika_worker: WorkerProcess) -> None:
    features = np.full((2, 2048), 256, dtype=np.int32)
    features[0, :10] = np.frombuffer(b"%PDF-1.7\n%", dtype=np.uint8)
    raw = triton.InferInput("bytes", [2, 2048], "INT32")
    raw.set_data_from_numpy(features)
    with triton.InferenceServerClient(magika_worker.url.removeprefix("http://")) as tc:
        scores = tc.infer("magika", [raw]).as_numpy("target_label")
    assert scores.shape == (2, 214) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-4)


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        (
            [{"name": "bytes", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}],
            "must have shape [-1, 2048]",
        ),
        (
            [{"name": "bytes", "shape": [1, 2048], "datatype": "FP32", "data": [0.0] * 2048}],
            "must be INT32, got FP32",
        ),
        (
            [{"name": "content", "shape": [2], "datatype": "BYTES", "data": ["a"]}],
            "holds 2 elements but data has 1",
        ),
        (
            [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}],
            "unknown input 'pixels'",
        ),
    ],
)
def test_bad_tensors_are_400(
    magika_worker: WorkerProcess, inputs: list[dict[str, object]], fragment: str
) -> None:
    r = httpx.post(f"{magika_worker.url}/v2/models/magika/infer", json={"inputs": inputs})
    assert r.status_code == 400
    assert fragment in r.json()["error"]


def test_unknown_model_is_404_in_oip_shape(magika_worker: WorkerProcess) -> None:
    with triton.InferenceServerClient(magika_worker.url.removeprefix("http://")) as tc:
        with pytest.raises(InferenceServerException, match="is not served here"):
            tc.get_model_metadata("resnet")
    r = httpx.get(f"{magika_worker.url}/v2/models/resnet/ready")
    assert r.status_code == 404 and "resnet" in r.json()["error"]
