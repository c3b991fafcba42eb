"""The Spin guest (spin-sdk + componentize-py) under the component host: the real
component calls host functions for fermyon:spin/llm@2.0.0. Here those host functions
are plain Python that records what the guest asked (a fake of the models, named so);
the worker tests answer them with the real llama and onnx runtimes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from wasmtime import component as wc

from runtime.backends.wasm.abi.spin import LLM_INTERFACE
from runtime.backends.wasm.build import build_guest
from runtime.backends.wasm.component import ComponentTemplate
from runtime.backends.wasm.host import CallState, Sandbox, WasmHost
from runtime.errors import GuestLinkError
from runtime.settings import Settings

pytestmark = pytest.mark.slow  # componentize-py build (~30 s) and compile, cached after


@pytest.fixture(scope="module")
def component(host: WasmHost, settings: Settings) -> wc.Component:
    return host.component(build_guest("spin-llm-app", settings))


def _record(**fields: Any) -> wc.Record:
    r = wc.Record()
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def test_guest_builds_prompt_and_cleans_the_answer(host: WasmHost, component: wc.Component) -> None:
    asked: list[tuple[str, str, Any]] = []

    def infer(store: Any, model: str, prompt: str, params: Any) -> Any:  # fake model
        asked.append((model, prompt, params))
        usage = _record(prompt_token_count=7, generated_token_count=3)
        return _record(text=" Paris.<|im_end|>trailing junk", usage=usage)

    def embeddings(store: Any, model: str, texts: list[str]) -> Any:  # fake model
        return wc.Variant("model-not-supported")

    template = ComponentTemplate(
        host, component, {LLM_INTERFACE: {"infer": infer, "generate-embeddings": embeddings}}
    )
    request = {
        "task": "chat",
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 12,
        "temperature": 0.5,
    }
    result = template.call(Sandbox(), CallState(), "handle", json.dumps(request))
    assert result.tag == "ok", result
    assert json.loads(result.payload) == {
        "text": "Paris.",
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }
    [(model, prompt, params)] = asked
    assert model == "smollm2"
    assert prompt == "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert getattr(params, "max-tokens") == 12 and abs(params.temperature - 0.5) < 1e-6

    embed = {"task": "embedding", "model": "nope", "input": ["x"]}
    result = template.call(Sandbox(), CallState(), "handle", json.dumps(embed))
    assert result.tag == "err" and "ModelNotSupported" in result.payload
    result = template.call(Sandbox(), CallState(), "handle", "not json")
    assert result.tag == "err" and result.payload.startswith("bad request")


def test_missing_host_interface_fails_at_load(host: WasmHost, component: wc.Component) -> None:
    with pytest.raises(GuestLinkError, match="cannot be instantiated"):
        ComponentTemplate(host, component, {})


def test_a_component_is_compiled_once(tmp_path: Path, settings: Settings) -> None:
    path = build_guest("spin-llm-app", settings)
    first = WasmHost(Settings(state_dir=tmp_path))
    first.component(path)
    [cached] = list((tmp_path / "wasm" / "precompiled").glob("component-*.cwasm"))
    mtime = cached.stat().st_mtime_ns
    WasmHost(Settings(state_dir=tmp_path)).component(path)
    assert cached.stat().st_mtime_ns == mtime
