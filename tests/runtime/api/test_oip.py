"""OIP v2 wire conversions: JSON and the binary tensor extension, both ways."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from runtime.api.oip import InferenceRequest, decode_request, encode_response
from runtime.errors import BadInput
from runtime.spec.types import Tensor


def body(*inputs: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def test_json_tensors_keep_type_and_shape() -> None:
    _, tensors = decode_request(
        body(
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
            {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
            {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["x", "é"]},
        ),
        None,
    )
    a, b, c = tensors
    assert a.data.dtype == np.float32 and a.shape == (2, 2) and a.data[1, 1] == 4.5
    assert b.data.dtype == np.int64 and b.data.tolist() == [1, 2, 3]
    assert c.data.tolist() == [b"x", "é".encode()]


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]},
            "shape [2, 2] holds 4 elements but data has 3",
        ),
        ({"name": "a", "shape": [1], "datatype": "FP33", "data": [1]}, "unknown datatype 'FP33'"),
        (
            {"name": "a", "shape": [1], "datatype": "INT64", "data": ["x"]},
            "INT64 data must be numbers",
        ),
        ({"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}, "must be whole numbers"),
        (
            {"name": "a", "shape": [1], "datatype": "BYTES", "data": [3]},
            "BYTES data must be strings",
        ),
        ({"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}, "negative dimension"),
        ({"name": "a", "shape": [1], "datatype": "FP32"}, "has no data"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "field 'inputs.0.name': Field required"),
    ],
)
def test_bad_tensors(item: dict[str, object], fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        decode_request(body(item), None)
    assert fragment in info.value.message


def test_not_json() -> None:
    with pytest.raises(BadInput, match="not valid JSON"):
        decode_request(b"{nope", None)


def test_binary_extension_round_trip() -> None:
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    strings = [b"abc", b""]
    raw_bytes = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "f",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": floats.nbytes},
                },
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw_bytes)},
                },
            ],
            "outputs": [{"name": "f", "parameters": {"binary_data": True}}, {"name": "s"}],
        }
    ).encode()
    request, (f, s) = decode_request(header + floats.tobytes() + raw_bytes, len(header))
    np.testing.assert_array_equal(f.data, floats)
    assert s.data.tolist() == strings

    payload, length = encode_response("m", request, [f, s])
    assert length is not None
    meta = json.loads(payload[:length])
    out_f, out_s = meta["outputs"]
    assert out_f["parameters"]["binary_data_size"] == floats.nbytes and "data" not in out_f
    assert out_s["data"] == ["abc", ""]
    np.testing.assert_array_equal(
        np.frombuffer(payload[length:], dtype="<f4").reshape(2, 3), floats
    )


@pytest.mark.parametrize(
    ("size", "tail", "fragment"),
    [
        (100, b"\0" * 24, "runs past the body"),
        (24, b"\0" * 28, "belong to no input"),
        (20, b"\0" * 20, "needs 24 bytes, got 20"),
    ],
)
def test_binary_sizes_are_checked(size: int, tail: bytes, fragment: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "f",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    with pytest.raises(BadInput, match=fragment):
        decode_request(header + tail, len(header))


def test_unknown_requested_output() -> None:
    request = InferenceRequest.model_validate(
        {
            "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            "outputs": [{"name": "nope"}],
        }
    )
    with pytest.raises(BadInput, match="has no output 'nope'"):
        encode_response("m", request, [Tensor("y", "FP32", np.zeros(1, np.float32))])


def test_binary_output_for_all_when_asked_on_the_request() -> None:
    request = InferenceRequest.model_validate(
        {
            "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}],
            "parameters": {"binary_data_output": True},
            "id": "r1",
        }
    )
    payload, length = encode_response("m", request, [Tensor("y", "INT64", np.array([7, 8]))])
    assert length is not None and json.loads(payload[:length])["id"] == "r1"
    assert np.frombuffer(payload[length:], dtype="<i8").tolist() == [7, 8]
