"""KServe Open Inference Protocol (v2) wire types and their converters.

Follows the OIP v2 REST specification: an inference request is
``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "parameters", "data"}],
"outputs": [{"name", "parameters"}]}``; tensor ``data`` is given row-major, flattened
or nested; errors are ``{"error": "<message>"}``.

Also implements the binary tensor data extension used by Triton and ``tritonclient``:
the ``Inference-Header-Content-Length`` header gives the size of the JSON header; the
raw tensors follow in input order, each input's size in its
``parameters.binary_data_size``. BYTES elements are a 4-byte little-endian length
followed by the bytes. Outputs are returned in binary when the request asks for it
(``parameters.binary_data`` on an output, or ``binary_data_output`` on the request).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.api.body import load_json
from runtime.errors import BadInput, EdgeInferError, describe_validation
from runtime.spec.datatypes import OIP_TO_NUMPY
from runtime.spec.types import Tensor, TensorSpec

__all__ = [
    "HEADER_LENGTH",
    "InferenceRequest",
    "decode_request",
    "encode_response",
    "error_body",
    "metadata_response",
]

HEADER_LENGTH = "inference-header-content-length"


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def decode_request(body: bytes, header_length: int | None) -> tuple[InferenceRequest, list[Tensor]]:
    """Parse a JSON (or JSON + binary) request into typed tensors. Raises BadInput."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadInput(
                f"Inference-Header-Content-Length is {header_length} but the body is "
                f"{len(body)} bytes"
            )
        header, binary = body[:header_length], body[header_length:]
    else:
        header, binary = body, b""
    raw = load_json(header)
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(describe_validation(exc)) from None
    tensors, offset = [], 0
    for item in request.inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadInput(f"input {item.name!r}: binary_data_size {size} runs past the body")
            tensors.append(_from_binary(item, binary[offset : offset + size]))
            offset += size
        else:
            tensors.append(_from_json(item))
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, tensors


def _check_header(item: RequestInput) -> tuple[np.dtype, int]:
    if item.datatype not in OIP_TO_NUMPY:
        allowed = ", ".join(OIP_TO_NUMPY)
        raise BadInput(
            f"input {item.name!r}: unknown datatype {item.datatype!r}; allowed: {allowed}"
        )
    if any(d < 0 for d in item.shape):
        raise BadInput(f"input {item.name!r}: shape {item.shape} has a negative dimension")
    return OIP_TO_NUMPY[item.datatype], int(np.prod(item.shape, dtype=np.int64))


def _from_json(item: RequestInput) -> Tensor:
    dtype, count = _check_header(item)
    if item.data is None:
        raise BadInput(f"input {item.name!r} has no data")
    flat = _flatten(item.data)
    if len(flat) != count:
        raise BadInput(
            f"input {item.name!r}: shape {item.shape} holds {count} elements but data has "
            f"{len(flat)}"
        )
    if item.datatype == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        if any(not isinstance(v, bytes) for v in values):
            raise BadInput(f"input {item.name!r}: BYTES data must be strings")
        array = np.empty(count, dtype=object)
        array[:] = values
        return Tensor(item.name, item.datatype, array.reshape(item.shape))
    if any(isinstance(v, str | bytes | dict | list) or v is None for v in flat):
        raise BadInput(f"input {item.name!r}: {item.datatype} data must be numbers")
    try:
        array = np.asarray(flat, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadInput(f"input {item.name!r}: data is not {item.datatype}: {exc}") from None
    if dtype.kind in "iu" and any(isinstance(v, float) and not v.is_integer() for v in flat):
        raise BadInput(f"input {item.name!r}: {item.datatype} data must be whole numbers")
    return Tensor(item.name, item.datatype, array.reshape(item.shape))


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _from_binary(item: RequestInput, raw: bytes) -> Tensor:
    dtype, count = _check_header(item)
    if item.datatype == "BYTES":
        values, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise BadInput(f"input {item.name!r}: truncated BYTES element length")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise BadInput(f"input {item.name!r}: truncated BYTES element")
            values.append(raw[pos : pos + n])
            pos += n
        if len(values) != count:
            raise BadInput(
                f"input {item.name!r}: shape {item.shape} holds {count} elements, "
                f"binary data has {len(values)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = values
        return Tensor(item.name, item.datatype, array.reshape(item.shape))
    little = dtype.newbyteorder("<")
    if len(raw) != count * little.itemsize:
        raise BadInput(
            f"input {item.name!r}: shape {item.shape} of {item.datatype} needs "
            f"{count * little.itemsize} bytes, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=little).astype(dtype).reshape(item.shape)
    return Tensor(item.name, item.datatype, array)


def _wants_binary(request: InferenceRequest, name: str) -> bool:
    for out in request.outputs or []:
        if out.name == name:
            return bool((out.parameters or {}).get("binary_data", False))
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode_response(
    model: str, request: InferenceRequest, outputs: list[Tensor]
) -> tuple[bytes, int | None]:
    """Body and, when any output travels in binary, the JSON header's length."""
    if request.outputs:
        wanted = {o.name for o in request.outputs}
        known = {t.name for t in outputs}
        missing = sorted(wanted - known)
        if missing:
            raise BadInput(
                f"model {model!r} has no output {missing[0]!r}; outputs: {', '.join(sorted(known))}"
            )
        outputs = [t for t in outputs if t.name in wanted]
    entries, blobs = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if _wants_binary(request, tensor.name):
            blob = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(tensor)
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _to_json(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    values: list[Any] = flat.tolist()
    return values


def _to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts = []
        for v in tensor.data.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    dtype = OIP_TO_NUMPY[tensor.datatype].newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def metadata_response(
    name: str, platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, Any]:
    def spec(t: TensorSpec) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [spec(t) for t in inputs],
        "outputs": [spec(t) for t in outputs],
    }


def error_body(exc: EdgeInferError) -> dict[str, Any]:
    """OIP v2's error shape."""
    return {"error": exc.message}
