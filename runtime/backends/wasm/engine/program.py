"""The engine's graph program: its data type, the numpy meaning of every op, and the
buffer plan.

A :class:`Program` is what ``wasm-modules/engine/graph.c`` executes: ``ops`` over values
``0..len(value_sizes)-1`` (value 0 is the input row, as float), constants by name, each
value assigned to one of ``buffers``. :func:`run_op` is the reference semantics of each
op (the guest's C must match it); :func:`run_program` runs a whole program in numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.backends.wasm.engine import winograd

__all__ = [
    "BINARY_NP",
    "FORMAT",
    "MAX_FUSED_CODE",
    "MAX_FUSED_INPUTS",
    "MAX_RANK",
    "UNARY_NP",
    "Program",
    "plan_buffers",
    "reads",
    "run_op",
    "run_program",
]

FORMAT = "edgeinfer-graph"
MAX_RANK = 6
#: A fused op's limits (graph.c's FUSED_CODE and FUSED_INPUTS).
MAX_FUSED_CODE = 16
MAX_FUSED_INPUTS = 6


@dataclass
class Program:
    """The engine's program: ``ops`` over values ``0..len(value_sizes)-1`` (value 0 is
    the input, as float), ``consts`` referenced by name, buffers planned."""

    input_shape: tuple[int, ...]
    input_float: bool
    output_vid: int
    output_shape: tuple[int, ...]
    value_sizes: list[int] = field(default_factory=list)
    ops: list[dict[str, Any]] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    buffers: list[int] = field(default_factory=list)  # size of each planned buffer
    value_buffer: list[int] = field(default_factory=list)  # buffer of each value

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "input": {
                "shape": list(self.input_shape),
                "width": int(np.prod(self.input_shape)),
                "dtype": "float32" if self.input_float else "int32",
            },
            "output": {
                "value": self.output_vid,
                "shape": list(self.output_shape),
                "width": int(np.prod(self.output_shape)),
            },
            "buffers": self.buffers,
            "values": self.value_buffer,
            "ops": self.ops,
        }


BINARY_NP: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}
UNARY_NP: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "reciprocal": lambda x: 1.0 / x,
    "relu": lambda x: np.maximum(x, 0),
    "erf": lambda x: np.vectorize(math.erf)(x).astype(np.float32),
    "neg": np.negative,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "abs": np.abs,
}


def run_op(
    op: dict[str, Any], values: dict[int, np.ndarray], consts: dict[str, np.ndarray]
) -> np.ndarray:
    """One engine op in numpy: the reference the guest's op must match."""
    kind = op["op"]

    def operand(spec: dict[str, Any]) -> np.ndarray:
        arr = values[spec["v"]] if "v" in spec else consts[spec["c"]]
        return np.asarray(arr, dtype=np.float32).reshape(spec["shape"])

    if kind == "binary":
        out = BINARY_NP[op["fn"]](operand(op["a"]), operand(op["b"]))
        return np.broadcast_to(out, op["shape"]).astype(np.float32)
    if kind == "fused":
        return _run_fused(op, values)
    x = np.asarray(values[op["in"]], dtype=np.float32)
    if kind == "winograd":
        bias = consts[op["bias"]] if "bias" in op else None
        out = winograd.reference(
            x.reshape(op["h"], op["c"]),
            consts[op["weight"]].reshape(-1, op["c"], op["m"]),
            bias,
            taps=op["taps"],
            pad=op["pad"],
            out_rows=op["oh"],
        )
        return out.reshape(1, op["m"], op["oh"], 1)
    if kind == "unary":
        with np.errstate(all="ignore"):
            return UNARY_NP[op["fn"]](x).astype(np.float32)
    if kind == "reduce":
        r3 = x.reshape(op["outer"], op["n"], op["inner"])
        if op["fn"] == "max":
            return r3.max(axis=1)
        return r3.mean(axis=1) if op["fn"] == "mean" else r3.sum(axis=1)
    if kind == "transpose":
        return np.transpose(x.reshape(op["in_shape"]), op["perm"]).copy()
    if kind == "slice":
        r = x.reshape(op["in_shape"])
        where = tuple(
            slice(b, b + st * n, st)
            if st > 0
            else slice(b, (b + st * n) if b + st * n >= 0 else None, st)
            for b, st, n in zip(op["begin"], op["step"], op["shape"], strict=True)
        )
        return r[where].copy()
    if kind == "softmax":
        r2 = x.reshape(op["outer"], op["n"])
        e = np.exp(r2 - r2.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if kind == "gather":
        idx = x.reshape(-1)
        table = consts[op["table"]]
        valid = (idx >= 0) & (idx < op["rows"]) & (idx == np.floor(idx))
        rows = np.where(valid, idx, 0).astype(np.int64)
        return np.where(valid[:, None], table[rows], 0.0).astype(np.float32)
    if kind == "matmul":
        out = x.reshape(op["m"], op["k"]) @ consts[op["weight"]]
        return out + consts[op["bias"]] if "bias" in op else out
    if kind == "conv":
        c, h, w, m, kh, kw = (op[k] for k in ("c", "h", "w", "m", "kh", "kw"))
        (sh, sw), (pt, pl), (dh, dw) = op["stride"], op["pad"], op["dilation"]
        oh, ow = op["oh"], op["ow"]
        img = np.zeros((c, h + 2 * max(pt, 0) + kh * dh, w + 2 * max(pl, 0) + kw * dw), np.float32)
        img[:, pt : pt + h, pl : pl + w] = x.reshape(c, h, w)
        cols = np.empty((oh * ow, c * kh * kw), np.float32)
        for i in range(kh):
            for j in range(kw):
                patch = img[:, i * dh : i * dh + sh * oh : sh, j * dw : j * dw + sw * ow : sw]
                cols[:, np.arange(c) * kh * kw + i * kw + j] = patch.reshape(c, oh * ow).T
        out = cols @ consts[op["weight"]].T
        if "bias" in op:
            out = out + consts[op["bias"]]
        return out.T.reshape(1, m, oh, ow).copy()
    raise ValueError(f"unknown engine op {kind!r}")


def _run_fused(op: dict[str, Any], values: dict[int, np.ndarray]) -> np.ndarray:
    """A fused op's little program: each step reads inputs ``{"v": i}``, earlier steps'
    results ``{"t": j}`` or scalars ``{"s": x}``; the last step's result is the output."""
    ins = [np.asarray(values[v], dtype=np.float32).reshape(-1) for v in op["in"]]
    results: list[np.ndarray] = []

    def get(ref: dict[str, Any]) -> np.ndarray:
        if "v" in ref:
            return ins[ref["v"]]
        if "t" in ref:
            return results[ref["t"]]
        return np.float32(ref["s"])  # type: ignore[return-value]

    with np.errstate(all="ignore"):
        for step in op["code"]:
            if step["fn"] in UNARY_NP:
                out = UNARY_NP[step["fn"]](get(step["a"]))
            else:
                out = BINARY_NP[step["fn"]](get(step["a"]), get(step["b"]))
            results.append(np.broadcast_to(np.asarray(out, np.float32), (op["n"],)))
    return results[-1].copy()


def reads(op: dict[str, Any]) -> list[int]:
    """The values an op reads."""
    if op["op"] == "binary":
        return [s["v"] for s in (op["a"], op["b"]) if "v" in s]
    if op["op"] == "fused":
        return list(op["in"])
    return [op["in"]]


def plan_buffers(prog: Program) -> None:
    """Assign each value a buffer; a buffer is reused once its value's last reader ran.
    An op never writes into a buffer it reads (the kernels are not all in-place safe)."""
    last_read: dict[int, int] = {}
    for i, op in enumerate(prog.ops):
        for v in reads(op):
            last_read[v] = i
    last_read[prog.output_vid] = len(prog.ops)
    assignment = [-1] * len(prog.value_sizes)
    free: list[int] = []
    assignment[0] = 0
    prog.buffers = [prog.value_sizes[0]]
    for i, op in enumerate(prog.ops):
        out = op["out"]
        size = prog.value_sizes[out]
        fit = [b for b in free if prog.buffers[b] >= size]
        if fit:
            buf = min(fit, key=lambda b: prog.buffers[b])
            free.remove(buf)
        elif free:
            buf = max(free, key=lambda b: prog.buffers[b])
            free.remove(buf)
            prog.buffers[buf] = size
        else:
            buf = len(prog.buffers)
            prog.buffers.append(size)
        assignment[out] = buf
        for v in set(reads(op)):
            if last_read.get(v) == i and v != prog.output_vid:
                still = any(
                    assignment[u] == assignment[v] and last_read.get(u, -1) > i
                    for u in range(len(assignment))
                    if u != v and assignment[u] >= 0
                )
                if not still and assignment[v] not in free:
                    free.append(assignment[v])
    prog.value_buffer = assignment


def run_program(prog: Program, row: np.ndarray) -> np.ndarray:
    """Executes the program in numpy on one input row (the engine's semantics)."""
    values: dict[int, np.ndarray] = {0: np.asarray(row, dtype=np.float32).reshape(prog.input_shape)}
    for op in prog.ops:
        values[op["out"]] = run_op(op, values, prog.consts)
    return values[prog.output_vid].reshape(-1)
