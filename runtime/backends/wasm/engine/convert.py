"""Converts an ONNX classifier into the pure-compute engine's graph program.

The engine (``wasm-modules/engine/graph.c``) runs a straight-line program of tensor
operations on one sample at a time, with every shape fixed. This converter turns the
ONNX subset such models use into that program, host-side, with the ``onnx`` package:

* the batch dimension is fixed to 1, so the shape arithmetic that exporters emit
  (``Shape``, ``Slice``, ``Concat``, ``Cast`` of shapes) folds into constants;
* every node whose inputs are all constant is evaluated here (numpy) and becomes a
  constant;
* ``Reshape``, ``Squeeze``, ``Unsqueeze``, a no-op ``Slice`` or ``Expand`` and a float
  ``Cast`` rename a buffer, they emit nothing;
* ``Equal(x, arange(depth))`` -> ``Cast`` -> ``MatMul(W)`` (a one-hot embedding, as
  jax2tf exports it) becomes one ``gather`` of W's rows;
* ``MatMul`` with a constant right operand, ``Conv`` (2-D, one group), element-wise
  ops with numpy broadcasting, ``Reduce{Sum,Max,Mean}``, ``GlobalMaxPool``,
  ``GlobalAveragePool``, ``Transpose``, ``Softmax`` map to one engine op each.

A 1-D ``Conv`` (a kernel of 2..5 rows over H, W = 1) whose input is a transpose of
channels-innermost data becomes a ``winograd`` op that reads that data directly
(:mod:`~runtime.backends.wasm.engine.winograd`); the rewrites of
:mod:`~runtime.backends.wasm.engine.optimize` (bias folding, element-wise fusion, dead
ops) run last.

Anything else raises :class:`GraphConversionError` naming the node. Buffers are planned
here too (a value's buffer is reused once its last reader has run), so the guest
allocates them once. The program is checked before it is written: it is executed in
numpy (:func:`run_program`) on sample inputs and compared with onnxruntime.

Why on the host: parsing ONNX protobufs and folding shape subgraphs in C inside the guest
would be most of the engine's code for no benefit at run time; the conversion runs once
per model and is cached (:func:`ensure_graph`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

from runtime.backends.wasm.engine import winograd
from runtime.backends.wasm.engine.optimize import optimize
from runtime.backends.wasm.engine.program import (
    BINARY_NP,
    MAX_RANK,
    Program,
    plan_buffers,
    run_op,
    run_program,
)
from runtime.errors import GraphConversionError

__all__ = ["CONVERTER_VERSION", "convert_onnx", "ensure_graph"]

CONVERTER_VERSION = "engine-graph-2"
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min"}
_UNARY = {
    "Tanh": "tanh",
    "Exp": "exp",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Relu": "relu",
    "Erf": "erf",
    "Neg": "neg",
    "Sigmoid": "sigmoid",
    "Abs": "abs",
}
_REDUCE = {"ReduceSum": "sum", "ReduceMax": "max", "ReduceMean": "mean"}
_ALIASES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


@dataclass
class _Dyn:
    """A tensor computed at run time: its value id, shape and a traced sample."""

    vid: int
    shape: tuple[int, ...]
    sample: np.ndarray


@dataclass
class _OneHot:
    """``Equal(indices, arange(depth))`` not yet consumed by a MatMul."""

    index: _Dyn
    depth: int
    shape: tuple[int, ...]


class _Converter:
    def __init__(self, model: onnx.ModelProto, sample: np.ndarray, input_float: bool) -> None:
        self.model = model
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in model.graph.initializer
        }
        self.env: dict[str, Any] = {}
        self.prog = Program(
            input_shape=tuple(sample.shape), input_float=input_float, output_vid=-1, output_shape=()
        )
        self._const_names: dict[int, tuple[str, np.ndarray]] = {}
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        inp = self._new_value(tuple(sample.shape), sample.astype(np.float32))
        graph_inputs = [i for i in model.graph.input if i.name not in self.consts]
        if len(graph_inputs) != 1 or len(model.graph.output) != 1:
            raise GraphConversionError("the engine runs models with one input and one output")
        self.env[graph_inputs[0].name] = inp

    # -- values and constants ------------------------------------------------------

    def _new_value(self, shape: tuple[int, ...], sample: np.ndarray) -> _Dyn:
        vid = len(self.prog.value_sizes)
        self.prog.value_sizes.append(int(np.prod(shape)) if shape else 1)
        return _Dyn(vid, tuple(shape), np.asarray(sample, dtype=np.float32).reshape(shape))

    def _const_ref(self, value: np.ndarray) -> str:
        arr = np.ascontiguousarray(value, dtype=np.float32)
        # Keyed by identity, so the same initializer is stored once; the entry keeps
        # ``value`` alive, else a temporary's id could be reused by another array.
        key = id(value)
        known = self._const_names.get(key)
        if known is not None and known[1] is value:
            return known[0]
        name = f"c{len(self.prog.consts)}"
        self.prog.consts[name] = arr
        self._const_names[key] = (name, value)
        return name

    def _get(self, name: str) -> Any:
        if name == "":
            return None
        if name in self.consts:
            return self.consts[name]
        if name in self.env:
            return self.env[name]
        raise GraphConversionError(f"tensor {name!r} is used before it is defined")

    def _emit(self, op: dict[str, Any], shape: tuple[int, ...], sample: np.ndarray) -> _Dyn:
        out = self._new_value(shape, sample)
        op["out"] = out.vid
        self.prog.ops.append(op)
        check = run_op(op, self._samples_for(op), self.prog.consts)
        if check.shape != out.sample.shape and check.size != out.sample.size:
            raise GraphConversionError(f"internal: op {op['op']} traced to the wrong shape")
        out.sample = check.reshape(shape)
        return out

    def _samples_for(self, op: dict[str, Any]) -> dict[int, np.ndarray]:
        return {v.vid: v.sample for v in self._all_dyn()}

    def _all_dyn(self) -> list[_Dyn]:
        return [v for v in self.env.values() if isinstance(v, _Dyn)]

    # -- conversion ---------------------------------------------------------------

    def convert(self) -> Program:
        for node in self.model.graph.node:
            self._node(node)
        out = self.env.get(self.model.graph.output[0].name)
        if not isinstance(out, _Dyn):
            raise GraphConversionError("the model's output does not depend on its input")
        self.prog.output_vid = out.vid
        self.prog.output_shape = out.shape
        optimize(self.prog)
        plan_buffers(self.prog)
        return self.prog

    def _node(self, node: onnx.NodeProto) -> None:
        ins = [self._get(n) for n in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        where = f"node {node.name or node.op_type} ({node.op_type})"
        if all(x is None or isinstance(x, np.ndarray) for x in ins):
            self.consts[node.output[0]] = _eval_const(node.op_type, ins, attrs, where, self.opset)
            return
        if node.op_type == "Shape" and isinstance(ins[0], _Dyn):  # static: batch is fixed
            shape = np.array(ins[0].shape, np.int64)
            self.consts[node.output[0]] = shape[attrs.get("start", 0) : attrs.get("end")]
            return
        try:
            result = self._dynamic(node.op_type, ins, attrs, where)
        except GraphConversionError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise GraphConversionError(f"{where}: {exc}") from exc
        self.env[node.output[0]] = result

    def _dynamic(self, op_type: str, ins: list[Any], attrs: dict[str, Any], where: str) -> Any:
        x = ins[0]
        if isinstance(x, _OneHot) or (len(ins) > 1 and isinstance(ins[1], _OneHot)):
            return self._one_hot_use(op_type, ins, attrs, where)
        if op_type in _ALIASES or (op_type == "Cast" and attrs.get("to") == onnx.TensorProto.FLOAT):
            shape = _alias_shape(op_type, x, ins, attrs)
            return _Dyn(x.vid, shape, x.sample.reshape(shape))
        if op_type == "Cast":
            raise GraphConversionError(f"{where}: only casts to float are supported at run time")
        if op_type == "Expand":
            target = tuple(np.broadcast_shapes(x.shape, tuple(int(d) for d in ins[1])))
            if target == x.shape:
                return x
            return self._binary("add", x, np.zeros((), np.float32), target)
        if op_type == "Slice":
            return self._slice(x, ins, where)
        if op_type == "Equal":
            return self._one_hot(ins, where)
        if op_type in _BINARY:
            a, b = ins
            shape = tuple(np.broadcast_shapes(_shape(a), _shape(b)))
            return self._binary(_BINARY[op_type], a, b, shape)
        if op_type in _UNARY:
            op = {"op": "unary", "fn": _UNARY[op_type], "in": x.vid, "n": x.sample.size}
            return self._emit(op, x.shape, x.sample)
        if op_type in _REDUCE or op_type in ("GlobalMaxPool", "GlobalAveragePool"):
            return self._reduce(op_type, ins, attrs, where)
        if op_type == "MatMul":
            return self._matmul(x, ins[1], None, where)
        if op_type == "Gemm":
            return self._gemm(ins, attrs, where)
        if op_type == "Transpose":
            perm = tuple(attrs.get("perm", range(len(x.shape))[::-1]))
            shape = tuple(x.shape[p] for p in perm)
            op = {"op": "transpose", "in": x.vid, "in_shape": list(x.shape), "perm": list(perm)}
            return self._emit(op, shape, np.transpose(x.sample, perm))
        if op_type == "Conv":
            return self._conv(ins, attrs, where)
        if op_type == "Softmax":
            axis = attrs.get("axis", -1) % len(x.shape)
            if axis != len(x.shape) - 1:
                raise GraphConversionError(f"{where}: Softmax over a non-last axis")
            n = x.shape[-1]
            op = {"op": "softmax", "in": x.vid, "outer": x.sample.size // n, "n": n}
            return self._emit(op, x.shape, x.sample)
        raise GraphConversionError(f"{where}: operator {op_type} is not supported by the engine")

    def _binary(self, fn: str, a: Any, b: Any, shape: tuple[int, ...]) -> _Dyn:
        if len(shape) > MAX_RANK:
            raise GraphConversionError(f"rank {len(shape)} is above the engine's {MAX_RANK}")
        op: dict[str, Any] = {"op": "binary", "fn": fn, "shape": list(shape)}
        for key, v in (("a", a), ("b", b)):
            vshape = _shape(v)
            padded = (1,) * (len(shape) - len(vshape)) + tuple(vshape)
            if isinstance(v, _Dyn):
                op[key] = {"v": v.vid, "shape": list(padded)}
            else:
                op[key] = {"c": self._const_ref(np.asarray(v)), "shape": list(padded)}
        sample = BINARY_NP[fn](_sample(a), _sample(b))
        return self._emit(op, shape, np.broadcast_to(sample, shape))

    def _slice(self, x: _Dyn, ins: list[Any], where: str) -> _Dyn:
        starts, ends = ins[1], ins[2]
        rank = len(x.shape)
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else np.arange(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * rank
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            index[int(a) % rank] = slice(int(s), int(e), int(st))
        sample = x.sample[tuple(index)]
        if sample.shape == x.shape:
            return x  # a full slice along every axis
        begin, step = [], []
        for axis, sl in enumerate(index):
            s, _, st = sl.indices(x.shape[axis])
            begin.append(s)
            step.append(st)
        op = {
            "op": "slice",
            "in": x.vid,
            "in_shape": list(x.shape),
            "begin": begin,
            "step": step,
            "shape": list(sample.shape),
        }
        return self._emit(op, tuple(sample.shape), sample)

    def _one_hot(self, ins: list[Any], where: str) -> _OneHot:
        idx, table = ins
        if not isinstance(idx, _Dyn) or not isinstance(table, np.ndarray):
            raise GraphConversionError(f"{where}: Equal is supported only as a one-hot encoding")
        depth = table.shape[-1]
        if (
            idx.shape[-1] != 1
            or table.size != depth
            or not np.array_equal(table.reshape(-1), np.arange(depth))
        ):
            raise GraphConversionError(f"{where}: Equal is supported only against arange(depth)")
        shape = tuple(np.broadcast_shapes(idx.shape, table.shape))
        return _OneHot(idx, depth, shape)

    def _one_hot_use(self, op_type: str, ins: list[Any], attrs: dict[str, Any], where: str) -> Any:
        hot = ins[0]
        if op_type == "Cast":
            return hot
        if op_type == "MatMul" and isinstance(hot, _OneHot) and isinstance(ins[1], np.ndarray):
            table = ins[1].astype(np.float32)
            if table.ndim != 2 or table.shape[0] != hot.depth:
                raise GraphConversionError(f"{where}: one-hot MatMul with a {table.shape} table")
            n = int(np.prod(hot.index.shape))
            shape = (*hot.shape[:-1], table.shape[1])
            op = {
                "op": "gather",
                "in": hot.index.vid,
                "table": self._const_ref(table),
                "rows": table.shape[0],
                "width": table.shape[1],
                "n": n,
            }
            sample = run_op(op, {hot.index.vid: hot.index.sample}, self.prog.consts)
            return self._emit(op, shape, sample.reshape(shape))
        raise GraphConversionError(f"{where}: a one-hot tensor may only feed Cast and MatMul")

    def _reduce(self, op_type: str, ins: list[Any], attrs: dict[str, Any], where: str) -> _Dyn:
        x: _Dyn = ins[0]
        rank = len(x.shape)
        if op_type.startswith("Global"):
            axes, keep, fn = list(range(2, rank)), 1, "max" if "Max" in op_type else "mean"
        else:
            fn = _REDUCE[op_type]
            keep = attrs.get("keepdims", 1)
            given = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
            if given is None or len(given) == 0:
                if attrs.get("noop_with_empty_axes", 0):
                    return x
                given = list(range(rank))
            axes = sorted(int(a) % rank for a in given)
        if axes != list(range(axes[0], axes[-1] + 1)):
            raise GraphConversionError(f"{where}: reducing over non-adjacent axes {axes}")
        outer = int(np.prod(x.shape[: axes[0]]))
        n = int(np.prod([x.shape[a] for a in axes]))
        inner = int(np.prod(x.shape[axes[-1] + 1 :]))
        if fn == "max":
            sample = x.sample.max(axis=tuple(axes), keepdims=bool(keep))
        elif fn == "mean":
            sample = x.sample.mean(axis=tuple(axes), keepdims=bool(keep))
        else:
            sample = x.sample.sum(axis=tuple(axes), keepdims=bool(keep))
        op = {"op": "reduce", "fn": fn, "in": x.vid, "outer": outer, "n": n, "inner": inner}
        return self._emit(op, tuple(sample.shape), sample)

    def _matmul(self, x: Any, w: Any, bias: np.ndarray | None, where: str) -> _Dyn:
        if not isinstance(x, _Dyn) or not isinstance(w, np.ndarray) or w.ndim != 2:
            raise GraphConversionError(
                f"{where}: MatMul needs a run-time left and 2-D constant right"
            )
        k, n = w.shape
        if x.shape[-1] != k:
            raise GraphConversionError(f"{where}: MatMul of {x.shape} by {w.shape}")
        shape = (*x.shape[:-1], n)
        op: dict[str, Any] = {
            "op": "matmul",
            "in": x.vid,
            "m": x.sample.size // k,
            "k": k,
            "n": n,
            "weight": self._const_ref(w.astype(np.float32)),
        }
        if bias is not None:
            op["bias"] = self._const_ref(np.broadcast_to(bias, (n,)).astype(np.float32))
        sample = x.sample @ w.astype(np.float32) + (0 if bias is None else bias)
        return self._emit(op, shape, sample)

    def _gemm(self, ins: list[Any], attrs: dict[str, Any], where: str) -> _Dyn:
        x, w = ins[0], ins[1]
        if attrs.get("transA", 0) or not isinstance(w, np.ndarray):
            raise GraphConversionError(f"{where}: Gemm needs transA=0 and a constant B")
        w = (w.T if attrs.get("transB", 0) else w) * attrs.get("alpha", 1.0)
        bias = ins[2] * attrs.get("beta", 1.0) if len(ins) > 2 and ins[2] is not None else None
        return self._matmul(x, w, bias, where)

    def _conv(self, ins: list[Any], attrs: dict[str, Any], where: str) -> _Dyn:
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        if not isinstance(w, np.ndarray) or w.ndim != 4 or len(x.shape) != 4:
            raise GraphConversionError(f"{where}: only 2-D Conv with constant weights")
        if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (
            b"NOTSET",
            "NOTSET",
        ):
            raise GraphConversionError(f"{where}: grouped or auto-padded Conv")
        m, c, kh, kw = w.shape
        sh, sw = attrs.get("strides", [1, 1])
        dh, dw = attrs.get("dilations", [1, 1])
        pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
        _, cin, h, wd = x.shape
        if cin != c:
            raise GraphConversionError(f"{where}: Conv input has {cin} channels, weights {c}")
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
        source = self._hwc_source(x)
        if (
            source is not None
            and kw == wd == 1
            and (sh, dh, pl, pr) == (1, 1, 0, 0)
            and winograd.eligible(kh)
            and c % 4 == 0
        ):
            return self._winograd(x, source, w, bias, pt, oh)
        op = {
            "op": "conv",
            "in": x.vid,
            "c": c, "h": h, "w": wd, "m": m, "kh": kh, "kw": kw,
            "oh": oh, "ow": ow, "stride": [sh, sw], "pad": [pt, pl], "dilation": [dh, dw],
            "weight": self._const_ref(w.reshape(m, -1).astype(np.float32)),
        }  # fmt: skip
        if bias is not None:
            op["bias"] = self._const_ref(bias.astype(np.float32))
        sample = run_op(op, {x.vid: x.sample}, self.prog.consts)
        return self._emit(op, (1, m, oh, ow), sample)

    def _hwc_source(self, x: _Dyn) -> int | None:
        """The value a Conv input ``x`` ([1, C, H, W]) was transposed from, when that
        value holds it as [H][W][C] (channels innermost, as Magika's graph has it)."""
        producer = next((op for op in self.prog.ops if op["out"] == x.vid), None)
        if producer is None or producer["op"] != "transpose" or len(producer["perm"]) != 4:
            return None
        perm = producer["perm"]
        if perm[0] != 0 or x.shape[0] != 1:
            return None
        # Where each of C, H, W sits in the source; axes of size 1 do not matter.
        placed = sorted((perm[axis], axis) for axis in (1, 2, 3) if x.shape[axis] != 1)
        wanted = [axis for axis in (2, 3, 1) if x.shape[axis] != 1]
        return int(producer["in"]) if [axis for _, axis in placed] == wanted else None

    def _winograd(self, x: _Dyn, source: int, w: np.ndarray, bias: Any, pad: int, oh: int) -> _Dyn:
        """A 1-D convolution over H by Winograd F(4, kh), reading ``source`` ([H][C])
        around the transpose (which is dropped when nothing else reads it)."""
        m, c, kh, _ = w.shape
        at, _, bt = winograd.matrices(kh)
        op = {
            "op": "winograd",
            "in": source,
            "h": x.shape[2], "c": c, "m": m, "taps": kh, "tile": winograd.TILE,
            "oh": oh, "pad": pad,
            "weight": self._const_ref(winograd.transform_weights(w.reshape(m, c, kh))),
            "bt": self._const_ref(bt.astype(np.float32)),
            "at": self._const_ref(at.astype(np.float32)),
        }  # fmt: skip
        if bias is not None:
            op["bias"] = self._const_ref(bias.astype(np.float32))
        src = next(v for v in self._all_dyn() if v.vid == source)
        sample = run_op(op, {source: src.sample}, self.prog.consts)
        return self._emit(op, (1, m, oh, 1), sample)


def _shape(v: Any) -> tuple[int, ...]:
    return v.shape if isinstance(v, _Dyn) else tuple(np.asarray(v).shape)


def _sample(v: Any) -> np.ndarray:
    return v.sample if isinstance(v, _Dyn) else np.asarray(v, dtype=np.float32)


def _alias_shape(op_type: str, x: _Dyn, ins: list[Any], attrs: dict[str, Any]) -> tuple[int, ...]:
    if op_type == "Reshape":
        target = [int(d) for d in ins[1]]
        target = [
            x.shape[i] if d == 0 and not attrs.get("allowzero") else d for i, d in enumerate(target)
        ]
        return tuple(x.sample.reshape(target).shape)
    if op_type == "Squeeze":
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
        sq = np.squeeze(x.sample, axis=None if axes is None else tuple(int(a) for a in axes))
        return tuple(sq.shape)
    if op_type == "Unsqueeze":
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("axes", [])
        return tuple(np.expand_dims(x.sample, tuple(int(a) for a in axes)).shape)
    if op_type == "Flatten":
        axis = attrs.get("axis", 1) % (len(x.shape) or 1)
        return (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    return x.shape


def _eval_const(
    op_type: str, ins: list[Any], attrs: dict[str, Any], where: str, opset: int
) -> np.ndarray:
    """Folds a node whose inputs are all constant (shape arithmetic, mostly)."""
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" for k in range(len(ins))]
    node = onnx.helper.make_node(
        op_type,
        [n if v is not None else "" for n, v in zip(names, ins, strict=True)],
        ["o"],
        **attrs,
    )
    given = {n: v for n, v in zip(names, ins, strict=True) if v is not None}
    helper_dtype = onnx.helper.np_dtype_to_tensor_dtype
    graph_inputs = [
        onnx.helper.make_tensor_value_info(n, helper_dtype(v.dtype), v.shape)
        for n, v in given.items()
    ]
    out_info = [onnx.helper.make_empty_tensor_value_info("o")]
    graph = onnx.helper.make_graph([node], "fold", graph_inputs, out_info)
    try:
        (out,) = ReferenceEvaluator(graph, opsets={"": opset}).run(None, given)
    except Exception as exc:
        raise GraphConversionError(f"{where}: cannot fold constant node: {exc}") from exc
    return np.asarray(out)


def convert_onnx(onnx_path: Path, *, check_rows: np.ndarray | None = None) -> Program:
    """Convert the ONNX model at ``onnx_path`` (one input whose first dimension is the
    batch; float32, or integers the engine reads as int32). ``check_rows`` (``[n, ...]``,
    default random bytes or normal floats) are run through
    the program in numpy and through onnxruntime; a mismatch raises."""
    model = onnx.load(str(onnx_path))
    (inp,) = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    if not dims or any(d <= 0 for d in dims):
        raise GraphConversionError(
            f"{onnx_path}: input {inp.name!r} needs fixed non-batch dimensions"
        )
    elem = inp.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    is_float = elem == onnx.TensorProto.FLOAT
    if not is_float and elem not in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
        raise GraphConversionError(f"{onnx_path}: input {inp.name!r} must be float32 or int")
    rng = np.random.default_rng(0)

    def sample_rows(n: int) -> np.ndarray:
        if is_float:
            return rng.standard_normal((n, *dims)).astype(np.float32)
        return rng.integers(0, 257, size=(n, *dims)).astype(np.float32)

    prog = _Converter(model, sample_rows(1), is_float).convert()
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = check_rows if check_rows is not None else sample_rows(4)
    (want,) = session.run(None, {inp.name: np.asarray(rows).astype(dtype)})
    for row, expected in zip(rows, want, strict=True):
        got = run_program(prog, row)
        if not np.allclose(got, expected.reshape(-1), rtol=1e-3, atol=1e-4):
            raise GraphConversionError(
                f"{onnx_path}: the converted program disagrees with onnxruntime "
                f"(max difference {np.abs(got - expected.reshape(-1)).max():.3g})"
            )
    return prog


def _write_atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_graph(onnx_path: Path, cache_dir: Path, *, name: str = "graph") -> Path:
    """A folder with ``graph.json`` and ``model.safetensors`` for ``onnx_path``, built
    once and cached under a hash of the ONNX file and the converter version."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    digest.update(Path(onnx_path).read_bytes())
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "graph"
    folder = Path(cache_dir) / f"{safe}-engine-{digest.hexdigest()[:16]}"
    if (folder / "graph.json").is_file():
        return folder
    prog = convert_onnx(Path(onnx_path))
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "model.safetensors", lambda p: save_file(prog.consts, p))
    text = json.dumps(prog.to_json(), indent=1)
    # graph.json last: its presence marks a complete folder.
    _write_atomic(folder / "graph.json", lambda p: Path(p).write_text(text, encoding="utf-8"))
    return folder
