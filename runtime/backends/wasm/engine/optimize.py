"""Rewrites of a converted graph program that make the guest do less work, each keeping
the program's meaning (the converter checks the result against onnxruntime):

* :func:`fold_conv_bias`: ``Conv`` (or ``winograd``) followed by an ``Add`` of one
  value per output channel becomes the convolution's own bias, added where the
  convolution writes its output;
* :func:`fuse_elementwise`: a run of element-wise ops over same-sized values (unary
  maps; binary ops whose operands are whole values or scalar constants) whose
  intermediate values nobody else reads becomes one ``fused`` op. The guest runs its
  little program block by block in its L1 cache, so a tanh-approximated GELU (nine ONNX
  nodes) reads its input and writes its output once instead of nine times;
* :func:`drop_dead`: ops whose output nobody reads (a transpose the convolution now
  reads around) are removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.backends.wasm.engine.program import MAX_FUSED_CODE, MAX_FUSED_INPUTS, Program, reads

__all__ = ["drop_dead", "fold_conv_bias", "fuse_elementwise", "optimize"]

_CONV_OPS = ("conv", "winograd")


def optimize(prog: Program) -> None:
    """All rewrites, in place, before buffers are planned."""
    fold_conv_bias(prog)
    fuse_elementwise(prog)
    drop_dead(prog)


def _readers(prog: Program) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, op in enumerate(prog.ops):
        for v in reads(op):
            out.setdefault(v, []).append(i)
    return out


def _rename(prog: Program, old: int, new: int) -> None:
    for op in prog.ops:
        if op["op"] == "binary":
            for key in ("a", "b"):
                if op[key].get("v") == old:
                    op[key]["v"] = new
        elif op["op"] == "fused":
            op["in"] = [new if v == old else v for v in op["in"]]
        elif op["in"] == old:
            op["in"] = new
    if prog.output_vid == old:
        prog.output_vid = new


def _conv_size(op: dict[str, Any]) -> tuple[int, int]:
    """(output channels, positions per channel) of a convolution op."""
    if op["op"] == "winograd":
        return op["m"], op["oh"]
    return op["m"], op["oh"] * op["ow"]


def fold_conv_bias(prog: Program) -> None:
    producer = {op["out"]: op for op in prog.ops}
    readers = _readers(prog)
    for op in list(prog.ops):
        if op["op"] != "binary" or op["fn"] != "add":
            continue
        for mine, other in (("a", "b"), ("b", "a")):
            conv = producer.get(op[mine].get("v", -1))
            if conv is None or conv["op"] not in _CONV_OPS or "bias" in conv:
                continue
            if len(readers.get(conv["out"], [])) != 1 or "c" not in op[other]:
                continue
            channels, positions = _conv_size(conv)
            cshape, oshape = op[other]["shape"], op["shape"]
            if int(np.prod(oshape)) != channels * positions or op[mine]["shape"] != oshape:
                continue
            big = [d for d, n in enumerate(cshape) if n != 1]
            if len(big) != 1 or cshape[big[0]] != channels:
                continue
            axis = big[0]
            if int(np.prod(oshape[:axis])) != 1 or int(np.prod(oshape[axis + 1 :])) != positions:
                continue
            name = f"c{len(prog.consts)}"
            prog.consts[name] = np.ascontiguousarray(
                prog.consts[op[other]["c"]].reshape(-1), dtype=np.float32
            )
            conv["bias"] = name
            prog.ops.remove(op)
            _rename(prog, op["out"], conv["out"])
            break


def _fusable(op: dict[str, Any], prog: Program) -> int | None:
    """The element count of an op that can join a fused op, else None."""
    if op["op"] == "unary":
        return int(op["n"])
    if op["op"] != "binary":
        return None
    n = int(np.prod(op["shape"]))
    for key in ("a", "b"):
        spec = op[key]
        if "v" in spec:
            if int(np.prod(spec["shape"])) != n:
                return None
        elif prog.consts[spec["c"]].size != 1:
            return None
    return n


def fuse_elementwise(prog: Program) -> None:
    producer = {op["out"]: i for i, op in enumerate(prog.ops)}
    readers = _readers(prog)
    group_of: dict[int, int] = {}  # op index -> group id (its first op's index)
    sizes: dict[int, int] = {}
    counts = [_fusable(op, prog) for op in prog.ops]
    for i, op in enumerate(prog.ops):
        n = counts[i]
        if n is None:
            continue
        # Join the group that made an operand only if every reader of that operand can
        # join it too: a value read elsewhere must be written out, so it ends the group.
        groups = {
            group_of[producer[v]]
            for v in reads(op)
            if producer.get(v) in group_of and all(counts[r] == n for r in readers[v])
        }
        gid = groups.pop() if len(groups) == 1 else i
        if gid != i and sizes[gid] != n:
            gid = i
        group_of[i] = gid
        sizes[gid] = n
    members: dict[int, list[int]] = {}
    for i, gid in group_of.items():
        members.setdefault(gid, []).append(i)
    replaced: dict[int, dict[str, Any]] = {}
    for idx in members.values():
        fused = _fuse(prog, idx, readers)
        if fused is not None:
            replaced[idx[-1]] = fused
            replaced.update({i: {} for i in idx[:-1]})
    if replaced:
        prog.ops = [
            replaced.get(i, op) for i, op in enumerate(prog.ops) if replaced.get(i, op) != {}
        ]


def _fuse(prog: Program, idx: list[int], readers: dict[int, list[int]]) -> dict[str, Any] | None:
    """One fused op for the ops at ``idx`` (in program order), or None when they do not
    make one: fewer than two, an intermediate read outside them, or over the limits."""
    if len(idx) < 2 or len(idx) > MAX_FUSED_CODE:
        return None
    inside = set(idx)
    ops = [prog.ops[i] for i in idx]
    temp = {op["out"]: t for t, op in enumerate(ops)}
    for op in ops[:-1]:
        if op["out"] == prog.output_vid or any(r not in inside for r in readers[op["out"]]):
            return None
    inputs: list[int] = []

    def ref(v: int) -> dict[str, Any]:
        if v in temp:
            return {"t": temp[v]}
        if v not in inputs:
            inputs.append(v)
        return {"v": inputs.index(v)}

    code: list[dict[str, Any]] = []
    for op in ops:
        if op["op"] == "unary":
            code.append({"fn": op["fn"], "a": ref(op["in"])})
            continue
        step: dict[str, Any] = {"fn": op["fn"]}
        for key in ("a", "b"):
            spec = op[key]
            if "v" in spec:
                step[key] = ref(spec["v"])
            else:
                step[key] = {"s": float(prog.consts[spec["c"]].reshape(-1)[0])}
        code.append(step)
    if len(inputs) > MAX_FUSED_INPUTS:
        return None
    n = int(ops[-1]["n"]) if ops[-1]["op"] == "unary" else int(np.prod(ops[-1]["shape"]))
    return {"op": "fused", "in": inputs, "n": n, "code": code, "out": ops[-1]["out"]}


def drop_dead(prog: Program) -> None:
    while True:
        read = {v for op in prog.ops for v in reads(op)} | {prog.output_vid}
        kept = [op for op in prog.ops if op["out"] in read]
        if len(kept) == len(prog.ops):
            return
        prog.ops = kept
