"""Choosing a runtime class and a device for a model (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.backends import registry
from runtime.backends.onnx import OnnxRuntime
from runtime.backends.registry import create_runtime, resolve_device, runtime_class
from runtime.errors import BadInput, RuntimeUnavailable
from runtime.settings import Settings
from runtime.spec.model import ModelSpec, RuntimeName
from runtime.spec.placement import CUDA_CAPABLE, DEVICE_CHOICES, Device
from runtime.spec.types import GenerateRequest, SamplingParams

SETTINGS = Settings(state_dir=Path("/nonexistent"))


def spec(**overrides: object) -> ModelSpec:
    base: dict[str, object] = {
        "name": "m",
        "task": "embedding",
        "artifacts": {"onnx": "m.onnx", "wasm": "m.wasm"},
        "runtimes": ["onnx"],
    }
    return ModelSpec.model_validate({**base, **overrides})


@pytest.mark.parametrize(
    ("host_gpu", "build_cuda", "expected"),
    [(False, False, "cpu"), (False, True, "cpu"), (True, False, "cpu"), (True, True, "cuda")],
)
def test_auto_device(
    monkeypatch: pytest.MonkeyPatch, host_gpu: bool, build_cuda: bool, expected: str
) -> None:
    monkeypatch.setattr(registry, "cuda_available", lambda: host_gpu)
    monkeypatch.setattr(OnnxRuntime, "supports_cuda", classmethod(lambda cls: build_cuda))
    assert resolve_device("auto", OnnxRuntime) == expected


def test_cuda_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "cuda_available", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="no CUDA device"):
        resolve_device("cuda", OnnxRuntime)
    with pytest.raises(RuntimeUnavailable, match="unknown device 'tpu'"):
        resolve_device("tpu", OnnxRuntime)


def test_auto_runtime_skips_runtimes_this_build_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(registry._REGISTRY, RuntimeName.WASM)  # a build without wasmtime
    rt = create_runtime(
        spec(runtimes=["wasm", "onnx"]),
        runtime="auto",
        device="cpu",
        settings=SETTINGS,
        base_dir=Path("."),
    )
    assert isinstance(rt, OnnxRuntime) and rt.device == "cpu"


@pytest.mark.parametrize(
    ("runtimes", "asked", "fragment"),
    [
        (["wasm"], "auto", "none of its runtimes ['wasm'] can run here"),
        (["onnx"], "llama", "does not list runtime 'llama'"),
        (["onnx"], "tensorrt", "unknown runtime 'tensorrt'"),
        (["wasm"], "wasm", "runtime 'wasm' is not available in this build"),
    ],
)
def test_runtime_choice_errors(
    runtimes: list[str], asked: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(registry._REGISTRY, RuntimeName.WASM)  # a build without wasmtime
    with pytest.raises(RuntimeUnavailable, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        create_runtime(
            spec(runtimes=runtimes),
            runtime=asked,
            device="cpu",
            settings=SETTINGS,
            base_dir=Path("."),
        )


def test_wasm_is_registered() -> None:
    from runtime.backends.wasm.backend import WasmRuntime

    assert runtime_class(RuntimeName.WASM) is WasmRuntime


def test_a_batch_over_max_batch_is_a_400_naming_the_limit() -> None:
    from runtime.backends.registry import check_batch
    from runtime.errors import BadInput
    from runtime.spec.model import load_config

    spec = load_config().get("minilm")
    assert spec is not None
    limit = spec.options.max_batch
    check_batch(spec, limit, "inputs")  # at the limit: fine
    with pytest.raises(BadInput) as info:
        check_batch(spec, limit + 1, "inputs")
    assert info.value.status == 400
    assert f"{limit + 1} inputs in one request" in info.value.message
    assert f"at most {limit} (options.max_batch)" in info.value.message


@pytest.mark.parametrize(
    ("params", "what"),
    [
        (SamplingParams(grammar='root ::= "a"'), "constrained decoding"),
        (SamplingParams(top_logprobs=0), "logprobs"),
    ],
)
def test_a_runtime_refuses_what_it_cannot_honour(params: SamplingParams, what: str) -> None:
    onnx = OnnxRuntime(spec(), device="cpu", settings=SETTINGS, base_dir=Path("."))
    onnx.check_generation(GenerateRequest(prompt="x"))  # plain sampling: nothing to refuse
    with pytest.raises(BadInput, match=what):
        onnx.check_generation(GenerateRequest(prompt="x", params=params))
    llama = runtime_class(RuntimeName.LLAMA)
    assert {"grammar", "logprobs"} <= llama.generation_features


def test_gpu_capable_runtimes_are_the_specs_set() -> None:
    """A runtime whose class can ever report CUDA support is in the spec's one set of
    GPU-capable runtimes, and only those: the placement, Knative and worker code read
    that set instead of asking each class."""
    overriding = {
        name
        for name in registry.registered_runtimes()
        if runtime_class(name).supports_cuda.__func__ is not registry.Runtime.supports_cuda.__func__  # type: ignore[attr-defined]
    }
    assert overriding == CUDA_CAPABLE


def test_gpu_runtimes_come_only_from_the_capable_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    for name in registry.registered_runtimes():
        monkeypatch.setattr(runtime_class(name), "supports_cuda", classmethod(lambda cls: True))
    assert registry.cuda_runtimes() == CUDA_CAPABLE


@pytest.mark.parametrize("device", DEVICE_CHOICES)
def test_every_device_choice_resolves_to_a_device(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    monkeypatch.setattr(OnnxRuntime, "supports_cuda", classmethod(lambda cls: True))
    got = resolve_device(device, OnnxRuntime)
    assert isinstance(got, Device)
    assert got is (Device.CUDA if device == "auto" else Device(device))
