"""Build an fp32 ONNX graph of a BERT-family sentence encoder from safetensors, without torch.

The graph uses plain ONNX ops (opset 17) in the layout a torch BERT export has, so
onnxruntime's CPU optimiser fuses it: residual ``Add`` + ``LayerNormalization`` become
``SkipLayerNormalization``, the erf GELU behind its biased ``MatMul`` becomes ``BiasGelu``, and
the attention scale folds into ``FusedMatMul``. The attention block also matches
``onnxruntime.transformers.optimizer``'s BERT pattern (it fuses all layers to ``Attention``),
though on these small models that buys little on CPU.

Graph contract (see :func:`build_bert_onnx`):

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[batch, sequence]``;
* outputs ``last_hidden_state``: float32 ``[batch, sequence, hidden]`` and
  ``sentence_embedding``: float32 ``[batch, hidden]``, the attention-mask-weighted mean of the
  token states, L2-normalised (norm clamped at 1e-12), as sentence-transformers computes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

#: Bump whenever the emitted graph changes; it is part of the cache key.
BUILDER_VERSION = "minilm-onnx-1"
OPSET = 17
#: IR 8 is what opset 17 needs and every onnxruntime >= 1.14 loads.
IR_VERSION = 8
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("last_hidden_state", "sentence_embedding")
#: Additive bias on masked keys, as torch BERT exports use (exp underflows to 0 in fp32).
MASK_BIAS = -10000.0
_CHUNK = 1 << 20


class _Graph:
    """Accumulates nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        out = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], f"{op_type}_{self._n}", **attrs))
        return out


def _load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    raw = load_file(str(model_dir / "model.safetensors"))
    # Checkpoints saved from BertFor* heads prefix the encoder with "bert.".
    return {k.removeprefix("bert."): v for k, v in raw.items()}


def _check_config(cfg: dict[str, Any]) -> tuple[int, int, int, float]:
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"only hidden_act 'gelu' (exact erf form) is supported, not {cfg['hidden_act']!r}"
        )
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    return hidden, heads, int(cfg["num_hidden_layers"]), float(cfg.get("layer_norm_eps", 1e-12))


def _linear(g: _Graph, w: dict[str, np.ndarray], x: str, prefix: str) -> str:
    """``x @ W.T + b`` with W stored pre-transposed as ``[in, out]``."""
    weight = g.const(f"{prefix}.weight_t", w[f"{prefix}.weight"].astype(np.float32).T)
    bias = g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
    return g.op("Add", [g.op("MatMul", [x, weight]), bias])


def _layer_norm(
    g: _Graph, w: dict[str, np.ndarray], x: str, prefix: str, eps: float, out: str | None = None
) -> str:
    scale = g.const(f"{prefix}.weight", w[f"{prefix}.weight"])
    bias = g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
    return g.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)


def _encoder_layer(
    g: _Graph, w: dict[str, np.ndarray], x: str, mask_bias: str, p: str, eps: float, out: str | None
) -> str:
    """One post-LN transformer block; ``p`` is its weight prefix, e.g. ``encoder.layer.0``."""
    head_shape = "const.head_shape"  # [0, 0, heads, head_size]: keep batch and sequence
    q = g.op("Reshape", [_linear(g, w, x, f"{p}.attention.self.query"), head_shape])
    k = g.op("Reshape", [_linear(g, w, x, f"{p}.attention.self.key"), head_shape])
    v = g.op("Reshape", [_linear(g, w, x, f"{p}.attention.self.value"), head_shape])
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])  # [B, N, S, H]
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])  # [B, N, H, S]
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])  # [B, N, S, H]
    scores = g.op("Div", [g.op("MatMul", [q, k]), "const.sqrt_head_size"])
    probs = g.op("Softmax", [g.op("Add", [scores, mask_bias])], axis=3)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, "const.hidden_shape"])
    attn = _linear(g, w, ctx, f"{p}.attention.output.dense")
    x = _layer_norm(g, w, g.op("Add", [attn, x]), f"{p}.attention.output.LayerNorm", eps)
    # Exact GELU, written as torch exports it: x * 0.5 * (1 + erf(x / sqrt(2))).
    h = _linear(g, w, x, f"{p}.intermediate.dense")
    erf = g.op("Erf", [g.op("Div", [h, "const.sqrt2"])])
    h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, "const.one"])]), "const.half"])
    h = _linear(g, w, h, f"{p}.output.dense")
    return _layer_norm(g, w, g.op("Add", [h, x]), f"{p}.output.LayerNorm", eps, out)


def build_bert_onnx(model_dir: Path, out_path: Path) -> Path:
    """Write an fp32 ONNX sentence encoder for the BERT checkpoint in ``model_dir``.

    Reads ``config.json`` (hidden size, heads, layers, ``layer_norm_eps``; ``hidden_act`` must
    be ``gelu`` and position embeddings absolute, else ``ValueError``) and
    ``model.safetensors``. The model has int64 inputs ``input_ids``, ``attention_mask``,
    ``token_type_ids`` of shape ``[batch, sequence]`` (both dynamic; sequence must not exceed
    ``max_position_embeddings``; position ids are ``0..sequence-1``) and float32 outputs
    ``last_hidden_state`` ``[batch, sequence, hidden]`` and ``sentence_embedding``
    ``[batch, hidden]`` (masked mean pooling, then L2 normalisation with the norm clamped at
    1e-12). Masked keys get an additive bias of ``MASK_BIAS`` before the softmax.

    The file is written to a temporary file in ``out_path``'s folder and moved into place with
    ``os.replace``, so readers never see a partial file. Returns ``out_path``.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hidden, heads, layers, eps = _check_config(cfg)
    w = _load_weights(model_dir)
    g = _Graph()
    g.const("const.head_shape", [0, 0, heads, hidden // heads], np.int64)
    g.const("const.hidden_shape", [0, 0, hidden], np.int64)
    g.const("const.sqrt_head_size", math.sqrt(hidden // heads))
    g.const("const.sqrt2", math.sqrt(2.0))
    g.const("const.one", 1.0)
    g.const("const.half", 0.5)
    g.const("const.mask_bias", MASK_BIAS)
    g.const("const.axes_0", [0], np.int64)
    g.const("const.axes_1", [1], np.int64)
    g.const("const.axes_2", [2], np.int64)
    g.const("const.norm_eps", 1e-12)
    g.const("const.count_eps", 1e-9)

    # Embeddings: word + position (rows 0..S-1 of the table) + token type, then LayerNorm.
    words_table = g.const("emb.word", w["embeddings.word_embeddings.weight"])
    words = g.op("Gather", [words_table, "input_ids"])
    seq_len = g.op("Slice", [g.op("Shape", ["input_ids"]), "const.axes_1", "const.axes_2"])
    pos_table = g.const("emb.position", w["embeddings.position_embeddings.weight"])
    positions = g.op("Slice", [pos_table, "const.axes_0", seq_len, "const.axes_0"], "positions")
    types_table = g.const("emb.token_type", w["embeddings.token_type_embeddings.weight"])
    types = g.op("Gather", [types_table, "token_type_ids"])
    x = g.op("Add", [g.op("Add", [words, positions]), types])
    x = _layer_norm(g, w, x, "embeddings.LayerNorm", eps)

    # Mask bias [B, 1, 1, S] = (1 - mask) * MASK_BIAS, shared by every layer.
    m = g.op("Unsqueeze", [g.op("Unsqueeze", ["attention_mask", "const.axes_1"]), "const.axes_2"])
    m = g.op("Cast", [m], to=TensorProto.FLOAT)
    mask_bias = g.op("Mul", [g.op("Sub", ["const.one", m]), "const.mask_bias"])
    for i in range(layers):
        last = "last_hidden_state" if i == layers - 1 else None
        x = _encoder_layer(g, w, x, mask_bias, f"encoder.layer.{i}", eps, last)

    # Mean pooling over unmasked tokens, then L2 normalisation.
    mf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # [B, S]
    weighted = g.op("Mul", [x, g.op("Unsqueeze", [mf, "const.axes_2"])])
    summed = g.op("ReduceSum", [weighted, "const.axes_1"], keepdims=0)  # [B, hidden]
    count = g.op("Max", [g.op("ReduceSum", [mf, "const.axes_1"], keepdims=1), "const.count_eps"])
    mean = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[1], keepdims=1), "const.norm_eps"])
    g.op("Div", [mean, norm], "sentence_embedding")

    f32, dims = TensorProto.FLOAT, ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes,
        "bert_sentence_encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in INPUT_NAMES],
        [
            helper.make_tensor_value_info("last_hidden_state", f32, [*dims, hidden]),
            helper.make_tensor_value_info("sentence_embedding", f32, ["batch", hidden]),
        ],
        g.inits,
        # Shape hint: lets onnxruntime see that every hidden state is [batch, sequence, hidden],
        # which its Add + LayerNormalization -> SkipLayerNormalization fusion requires.
        value_info=[helper.make_tensor_value_info("positions", f32, ["sequence", hidden])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgeinfer.runtime.minilm",
        producer_version=BUILDER_VERSION,
    )
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def _cache_key(model_dir: Path) -> str:
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    for fname in ("config.json", "model.safetensors"):
        digest.update(f"\0{fname}\0".encode())
        with open(model_dir / fname, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def ensure_bert_onnx(model_dir: Path, cache_dir: Path, *, name: str | None = None) -> Path:
    """Return a cached ONNX build of ``model_dir``, building it only when it is missing.

    The cache key is the sha256 of ``BUILDER_VERSION``, ``config.json`` and
    ``model.safetensors`` (read in 1 MiB chunks); the file is
    ``cache_dir / f"{name}-{key[:16]}.onnx"`` where ``name`` defaults to the model folder's name
    (characters outside ``[A-Za-z0-9._-]`` become ``_``). Concurrent callers may both build,
    but each build lands via an atomic ``os.replace``, so the path always holds a whole file.
    """
    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name or model_dir.resolve().name) or "bert"
    path = cache_dir / f"{safe}-{_cache_key(model_dir)[:16]}.onnx"
    if not path.is_file():
        build_bert_onnx(model_dir, path)
    return path
