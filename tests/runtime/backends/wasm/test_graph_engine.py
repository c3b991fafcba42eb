"""The engine's graph program: small real ONNX models converted on the host
(runtime.backends.wasm.engine.convert) and run by the guest (wasm-modules/engine/graph.c), each
op family checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.backends.wasm.build import build_guest
from runtime.backends.wasm.engine.convert import convert_onnx, ensure_graph
from runtime.backends.wasm.engine.reactor import KIND_GRAPH, EngineInstance
from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.errors import ConfigError, GraphConversionError
from runtime.settings import Settings

RNG = np.random.default_rng(3)


def _const(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, output, inits, path: Path) -> Path:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_net(path: Path) -> Path:
    """Conv (pads, strides, dilation, bias) -> Relu -> GlobalAveragePool -> Flatten ->
    Gemm (transB) -> Softmax."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1], dilations=[1, 2]
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, alpha=0.5),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    inits = [_const("w", (6, 3, 3, 2)), _const("b", (6,)), _const("gw", (5, 6)), _const("gb", (5,))]
    return _model(nodes, [x], y, inits, path)


def elementwise_net(path: Path) -> Path:
    """Transpose, strided Slice, ReduceMean/Max, broadcasting arithmetic, unary maps."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 5, 1])
    ints = TensorProto.INT64
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),  # n,6,5,4
        helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["s"]),  # n,3,5,4
        helper.make_node("ReduceMean", ["s"], ["m"], axes=[3], keepdims=1),  # n,3,5,1
        helper.make_node("ReduceMax", ["s"], ["mx"], axes=[3], keepdims=1),
        helper.make_node("Sub", ["s", "m"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["sg"]),
        helper.make_node("Erf", ["d"], ["er"]),
        helper.make_node("Tanh", ["mx"], ["th"]),
        helper.make_node("Abs", ["d"], ["ab"]),
        helper.make_node("Sqrt", ["ab"], ["sq"]),
        helper.make_node("Neg", ["sq"], ["ng"]),
        helper.make_node("Exp", ["ng"], ["ex"]),
        helper.make_node("Mul", ["sg", "er"], ["p1"]),
        helper.make_node("Add", ["p1", "ex"], ["p2"]),
        helper.make_node("Min", ["p2", "half"], ["p3"]),
        helper.make_node("Max", ["p3", "row"], ["p4"]),
        helper.make_node("Div", ["p4", "two"], ["p5"]),
        helper.make_node("ReduceSum", ["p5", "axis3"], ["p6"], keepdims=1),
        helper.make_node("Add", ["p6", "th"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 0], np.int64), "st"),
        numpy_helper.from_array(np.array([6, 5], np.int64), "en"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "ax"),
        numpy_helper.from_array(np.array([2, 1], np.int64), "sp"),
        numpy_helper.from_array(np.array([3], np.int64), "axis3"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        _const("row", (1, 1, 5, 4)),
    ]
    del ints
    return _model(nodes, [x], y, inits, path)


def one_hot_net(path: Path) -> Path:
    """Magika's embedding pattern: Equal(bytes, arange) -> Cast -> MatMul, then a Dense."""
    x = helper.make_tensor_value_info("bytes", TensorProto.INT32, ["n", 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12, 3])
    nodes = [
        helper.make_node("Unsqueeze", ["bytes", "axis"], ["u"]),
        helper.make_node("Equal", ["u", "range"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["hot"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["hot", "table"], ["e"]),
        helper.make_node("MatMul", ["e", "dense"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "axis"),
        numpy_helper.from_array(np.arange(10, dtype=np.int32).reshape(1, 1, 10), "range"),
        _const("table", (10, 7)),
        _const("dense", (7, 3)),  # k = 7: rows padded to whole vectors in the guest
    ]
    return _model(nodes, [x], y, inits, path)


def conv1d_net(path: Path, taps: int = 5, pads: tuple[int, int] = (2, 1)) -> Path:
    """Magika's convolution block: [n, H, C] rows -> Unsqueeze -> Transpose to NCHW ->
    a Conv of ``taps`` x 1 (no bias) -> Add of a per-channel bias -> the tanh GELU of
    nine nodes -> ReduceMax over positions. The converter turns it into a Winograd op
    reading the rows around the transpose, with the bias folded in, then one fused op."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 11, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])
    gelu = [
        helper.make_node("Mul", ["k3", "c"], ["g1"]),
        helper.make_node("Mul", ["c", "g1"], ["g2"]),
        helper.make_node("Mul", ["c", "g2"], ["g3"]),
        helper.make_node("Add", ["c", "g3"], ["g4"]),
        helper.make_node("Mul", ["kt", "g4"], ["g5"]),
        helper.make_node("Tanh", ["g5"], ["g6"]),
        helper.make_node("Add", ["one", "g6"], ["g7"]),
        helper.make_node("Mul", ["half", "g7"], ["g8"]),
        helper.make_node("Mul", ["c", "g8"], ["g"]),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis3"], ["u"]),  # n, 11, 8, 1
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1, 3]),  # n, 8, 11, 1
        helper.make_node("Conv", ["t", "w"], ["cv"], pads=[pads[0], 0, pads[1], 0]),
        helper.make_node("Squeeze", ["cv", "axis3"], ["sq"]),  # n, 6, oh
        helper.make_node("Add", ["sq", "bias"], ["c"]),
        *gelu,
        helper.make_node("ReduceMax", ["g"], ["y"], axes=[2], keepdims=0),
    ]
    scalar = {"k3": 0.044715, "kt": 0.7978845608, "one": 1.0, "half": 0.5}
    inits = [
        numpy_helper.from_array(np.array([3], np.int64), "axis3"),
        _const("w", (6, 8, taps, 1)),
        _const("bias", (1, 6, 1)),
        *(numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scalar.items()),
    ]
    return _model(nodes, [x], y, inits, path)


def test_conv1d_becomes_winograd_and_fused_ops(tmp_path: Path) -> None:
    prog = convert_onnx(conv1d_net(tmp_path / "m.onnx"))
    kinds = [op["op"] for op in prog.ops]
    assert kinds == ["winograd", "fused", "reduce"], kinds  # transpose dropped, bias folded
    assert "bias" in prog.ops[0] and len(prog.ops[1]["code"]) == 9


def test_fusion_keeps_values_read_elsewhere(tmp_path: Path) -> None:
    """An intermediate read outside the run (here by the output's Add) is not fused away."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    nodes = [
        helper.make_node("Tanh", ["x"], ["a"]),
        helper.make_node("Exp", ["a"], ["b"]),
        helper.make_node("ReduceSum", ["a", "ax"], ["s"], keepdims=1),
        helper.make_node("Add", ["b", "s"], ["y"]),
    ]
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    prog = convert_onnx(_model(nodes, [x], y, [ax], tmp_path / "m.onnx"))
    assert [op["op"] for op in prog.ops] == ["unary", "unary", "reduce", "binary"]


@pytest.fixture(scope="module")
def engine_wasm(settings: Settings) -> Path:
    return build_guest("engine", settings)


def _engine(host: WasmHost, wasm: Path, folder: Path, rows: int) -> EngineInstance:
    sandbox = Sandbox(
        env={
            "EI_CONFIG": "/files/graph/graph.json",
            "EI_WEIGHTS": "/files/graph/model.safetensors",
        },
        mounts=[(folder, "/files/graph")],
        timeout_s=30,
        max_memory_bytes=256 << 20,
    )
    return EngineInstance(
        host, host.template(host.module(wasm)), sandbox, max_tokens=rows, max_seq=0
    )


@pytest.mark.parametrize(
    ("build", "shape", "integer"),
    [
        (conv_net, (3, 9, 7), False),
        (elementwise_net, (4, 6, 5), False),
        (one_hot_net, (12,), True),
        (conv1d_net, (11, 8), False),
        (lambda p: conv1d_net(p, taps=3, pads=(0, 0)), (11, 8), False),
        (lambda p: conv1d_net(p, taps=2, pads=(1, 3)), (11, 8), False),
    ],
)
def test_graph_ops_match_onnxruntime(  # type: ignore[no-untyped-def]
    tmp_path: Path, host: WasmHost, engine_wasm: Path, build, shape, integer
) -> None:
    model = build(tmp_path / "model.onnx")
    folder = ensure_graph(model, tmp_path / "cache", name="t")
    engine = _engine(host, engine_wasm, folder, rows=4)
    try:
        assert engine.kind == KIND_GRAPH
        if integer:  # 10 and -1 are outside the one-hot range: zero rows, as onnxruntime
            rows = RNG.integers(-1, 11, size=(4, *shape)).astype(np.int32)
        else:
            rows = RNG.standard_normal((4, *shape)).astype(np.float32)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        (want,) = session.run(None, {session.get_inputs()[0].name: rows})
        got = engine.run(rows.reshape(4, -1), 4, 0)
        np.testing.assert_allclose(got, want.reshape(4, -1), rtol=2e-5, atol=2e-6)
    finally:
        engine.close()


def test_ensure_graph_caches_by_content(tmp_path: Path) -> None:
    model = conv_net(tmp_path / "a.onnx")
    first = ensure_graph(model, tmp_path / "cache")
    assert ensure_graph(model, tmp_path / "cache") == first
    assert {p.name for p in first.iterdir()} == {"graph.json", "model.safetensors"}
    other = conv_net(tmp_path / "b.onnx")  # new random weights
    assert ensure_graph(other, tmp_path / "cache") != first


def test_unsupported_operators_are_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="pick")
    path = _model([node], [x], y, [], tmp_path / "m.onnx")
    with pytest.raises(GraphConversionError, match="Hardmax is not supported"):
        convert_onnx(path)


def test_engine_reports_a_bad_program(tmp_path: Path, host: WasmHost, engine_wasm: Path) -> None:
    folder = ensure_graph(conv_net(tmp_path / "m.onnx"), tmp_path / "cache")
    text = (folder / "graph.json").read_text().replace('"conv"', '"convolve"')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "graph.json").write_text(text)
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="unknown graph op convolve"):
        _engine(host, engine_wasm, broken, rows=1)
