"""Tensor datatypes: OIP v2 names, numpy dtypes and ONNX type strings, in one table."""

from __future__ import annotations

import numpy as np

__all__ = ["OIP_TO_NUMPY", "from_onnx_type", "numpy_dtype", "oip_datatype"]

OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_OIP = {dtype: name for name, dtype in OIP_TO_NUMPY.items()}
_ONNX_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for an OIP v2 datatype name; KeyError if unknown."""
    return OIP_TO_NUMPY[datatype]


def oip_datatype(dtype: np.dtype) -> str:
    """OIP v2 datatype name of a numpy dtype (strings and bytes are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    return _NUMPY_TO_OIP[np.dtype(dtype)]


def from_onnx_type(onnx_type: str) -> str:
    """OIP v2 datatype of an onnxruntime type string such as ``tensor(float)``."""
    return _ONNX_TO_OIP[onnx_type]
