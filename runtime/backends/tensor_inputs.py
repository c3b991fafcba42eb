"""Reading the OIP v2 input tensors of the text and bytes models (shared by runtimes)."""

from __future__ import annotations

from typing import Any

from runtime.errors import BadInput
from runtime.spec.types import Tensor

__all__ = ["CONTENT_INPUT", "TEXT_INPUT", "only_input", "tensor_bytes", "tensor_text"]

TEXT_INPUT = "text"  # an embedding model's input: BYTES, one UTF-8 text per element
CONTENT_INPUT = "content"  # a classifier's input: BYTES, one file's content per element


def only_input(inputs: list[Tensor], name: str, datatype: str, model: str) -> Tensor:
    if len(inputs) != 1 or inputs[0].name != name:
        raise BadInput(f"model {model!r} takes one {datatype} input named {name!r}")
    if inputs[0].datatype != datatype:
        raise BadInput(f"input {name!r} must be {datatype}, got {inputs[0].datatype}")
    return inputs[0]


def tensor_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def tensor_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("text inputs must be UTF-8") from None
    return str(value)
