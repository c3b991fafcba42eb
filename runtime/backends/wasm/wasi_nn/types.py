"""wasi-nn constants in WasmEdge's numbering, and the types its backends share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BUSY",
    "CONTEXT_FULL",
    "DTYPES",
    "ENCODINGS",
    "END_OF_SEQUENCE",
    "INVALID_ARGUMENT",
    "INVALID_ENCODING",
    "MISSING_MEMORY",
    "MODEL_NOT_FOUND",
    "NOT_FOUND",
    "PROMPT_TOO_LONG",
    "RUNTIME_ERROR",
    "SUCCESS",
    "TARGETS",
    "TOO_LARGE",
    "UNSUPPORTED_OPERATION",
    "NnError",
    "NnTensor",
]

# WasmEdge's wasi-nn ErrNo.
SUCCESS = 0
INVALID_ARGUMENT = 1
INVALID_ENCODING = 2
MISSING_MEMORY = 3
BUSY = 4
RUNTIME_ERROR = 5
UNSUPPORTED_OPERATION = 6
TOO_LARGE = 7
NOT_FOUND = 8
END_OF_SEQUENCE = 100
CONTEXT_FULL = 101
PROMPT_TOO_LONG = 102
MODEL_NOT_FOUND = 103

# Graph encodings (WasmEdge's Backend enum) and execution targets (Device enum).
ENCODINGS = {
    "OPENVINO": 0,
    "ONNX": 1,
    "TENSORFLOW": 2,
    "PYTORCH": 3,
    "TENSORFLOWLITE": 4,
    "AUTODETECT": 5,
    "GGML": 6,
}
TARGETS = {"CPU": 0, "GPU": 1, "TPU": 2, "AUTO": 3}

# Tensor types (WasmEdge's TensorType) -> numpy dtypes.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float16),
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.uint8),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
}


class NnError(Exception):
    """A wasi-nn call failed with ``code``; the host function returns the code to the
    guest (the message goes to the log, never across the sandbox).

    Not in ``runtime.errors``' tree on purpose: it is a status code on its way to the
    guest, caught in the host function that raised it, never an error a caller sees."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NnTensor:
    dims: tuple[int, ...]
    type: int
    data: bytes
