"""The wasi-nn ``ONNX`` backend on onnxruntime: tensors in and out with their types and
shapes. Inputs are bound by index in the order of the model's inputs; output ``i`` is
the model's i-th output, as raw little-endian bytes of its element type."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.backends.wasm.wasi_nn.types import (
    DTYPES,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RUNTIME_ERROR,
    NnError,
    NnTensor,
)

__all__ = ["OnnxGraph"]

_ORT_TYPES = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class OnnxGraph:
    """One ONNX model in an onnxruntime session (sessions are thread-safe)."""

    def __init__(self, model: bytes | Path, *, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            source = str(model) if isinstance(model, Path) else model
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NnError(INVALID_ARGUMENT, f"onnxruntime cannot load the model: {exc}") from exc
        self.inputs = self.session.get_inputs()
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._lock = threading.Lock()

    def context(self, stdout: object = None) -> OnnxContext:
        return OnnxContext(self)

    def close(self) -> None:
        """Sessions are freed with the graph object."""


class OnnxContext:
    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        self.feeds: dict[str, np.ndarray] = {}
        self.results: list[np.ndarray] = []
        self.deadline_check = lambda: None

    def set_input(self, index: int, tensor: NnTensor) -> None:
        inputs = self.graph.inputs
        if not 0 <= index < len(inputs):
            raise NnError(INVALID_ARGUMENT, f"the model has {len(inputs)} inputs, not {index + 1}")
        dtype = DTYPES.get(tensor.type)
        if dtype is None:
            raise NnError(INVALID_ARGUMENT, f"unknown tensor type {tensor.type}")
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if count * dtype.itemsize != len(tensor.data):
            raise NnError(
                INVALID_ARGUMENT,
                f"tensor of shape {list(tensor.dims)} and type {dtype} needs "
                f"{count * dtype.itemsize} bytes, got {len(tensor.data)}",
            )
        want = _ORT_TYPES.get(inputs[index].type)
        if want is not None and np.dtype(want) != dtype:
            raise NnError(
                INVALID_ARGUMENT,
                f"input {inputs[index].name!r} is {inputs[index].type}, the tensor is {dtype}",
            )
        array = np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.dims)
        self.feeds[inputs[index].name] = array

    def compute(self) -> int:
        self.deadline_check()
        missing = [i.name for i in self.graph.inputs if i.name not in self.feeds]
        if missing:
            raise NnError(INVALID_ARGUMENT, f"inputs not set: {', '.join(missing)}")
        try:
            self.results = self.graph.session.run(None, self.feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise NnError(RUNTIME_ERROR, f"onnxruntime failed: {exc}") from exc
        return 0

    def get_output(self, index: int) -> bytes:
        if not 0 <= index < len(self.results):
            raise NnError(NOT_FOUND, f"no output {index} (compute first; {len(self.results)})")
        return np.ascontiguousarray(self.results[index]).tobytes()

    def compute_single(self) -> int:
        raise NnError(INVALID_ARGUMENT, "ONNX graphs have no single-step compute")

    def get_output_single(self, index: int) -> bytes:
        raise NnError(INVALID_ARGUMENT, "ONNX graphs have no single-step output")

    def fini_single(self) -> None:
        raise NnError(INVALID_ARGUMENT, "ONNX graphs have no single-step compute")

    def close(self) -> None:
        self.feeds.clear()
        self.results = []
