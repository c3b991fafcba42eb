"""One GGUF loaded once per process, shared by every model naming it; each execution
context its own (runtime/backends/wasm/wasi_nn/gguf_registry.py), with the real
SmolLM2 GGUF and the real wasi-nn-ggml guest."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_cpp import Llama

from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.backends.wasm.package import Preload
from runtime.backends.wasm.wasi_nn.ggml import GgmlModel
from runtime.backends.wasm.wasi_nn.gguf_registry import ContextSettings, GgufRegistry
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn

FRANCE = b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
COUNT = b"<|im_start|>user\nCount from one to five.<|im_end|>\n<|im_start|>assistant\n"
SETTINGS = ContextSettings(n_ctx=256, n_batch=256, threads=2)


def _greedy(llm: Llama, prompt: bytes, n: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(llm.tokenize(prompt, special=True), temp=0.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


@pytest.mark.slow
def test_two_models_naming_one_gguf_load_it_once(smollm2_gguf: Path) -> None:
    registry = GgufRegistry()
    chat = GgmlModel(smollm2_gguf, {"ctx-size": 256}, alias="chat", registry=registry)
    other = GgmlModel(smollm2_gguf, {"ctx-size": 128}, alias="other", registry=registry)
    a = chat.acquire(chat.defaults)
    b = other.acquire(other.defaults)
    c = chat.acquire({**chat.defaults, "ctx-size": 512})  # a new option set: a new context
    assert registry.loads == 1
    assert a.ctx != b.ctx != c.ctx and a._model is b._model is c._model
    (entry,) = registry.entries()
    assert entry.preload == f"chat,other:GGML:CPU:{smollm2_gguf.resolve()}"
    assert (entry.holders, entry.contexts) == (2, 3)
    for llm, model in ((a, chat), (b, other), (c, chat)):
        model.release(llm)
    chat.close()
    assert registry.entries()[0].holders == 1  # the other model still holds the weights
    other.close()
    assert registry.entries() == []
    # Loaded again only after every holder let go.
    again = GgmlModel(smollm2_gguf, {}, registry=registry)
    again.warm()
    again.close()
    assert registry.loads == 2


@pytest.mark.slow
def test_shared_contexts_answer_independently_and_as_a_fresh_load(smollm2_gguf: Path) -> None:
    registry = GgufRegistry()
    shared = registry.acquire(smollm2_gguf, alias="default")
    one, two = shared.context(SETTINGS), shared.context(SETTINGS)
    try:
        # Interleaved: each context keeps its own KV cache and sampler state.
        gen_one = one.generate(one.tokenize(FRANCE, special=True), temp=0.0, reset=True)
        gen_two = two.generate(two.tokenize(COUNT, special=True), temp=0.0, reset=True)
        inter_one, inter_two = [], []
        for _ in range(12):
            inter_one.append(next(gen_one))
            inter_two.append(next(gen_two))
        gen_one.close()
        gen_two.close()
        fresh = Llama(
            model_path=str(smollm2_gguf), n_ctx=256, n_batch=256, n_threads=2, verbose=False
        )
        try:
            assert inter_one == _greedy(fresh, FRANCE, 12)
            assert inter_two == _greedy(fresh, COUNT, 12)
        finally:
            fresh.close()
        assert inter_one != inter_two
        assert "Paris" in one.detokenize(inter_one).decode()
    finally:
        shared.close_context(one)
        shared.close_context(two)
        registry.release(shared)
    assert registry.loads == 1


@pytest.mark.slow
def test_two_hosts_of_one_gguf_serve_guests_from_one_load(
    host: WasmHost, ggml_guest: Path, smollm2_gguf: Path
) -> None:
    """Two models' wasi-nn hosts (their own aliases for one file) in one process."""
    from runtime.backends.wasm.wasi_nn import gguf_registry as module

    before = module.gguf_registry().loads
    hosts = [
        NnHost(
            [Preload.parse(f"{alias}:GGML:AUTO:{smollm2_gguf}")],
            {alias: smollm2_gguf},
            ggml_defaults={"ctx-size": 256, "threads": 2},
        )
        for alias in ("first", "second")
    ]
    template = host.template(host.module(ggml_guest), define_wasi_nn)
    answers = []
    try:
        for alias, nn in zip(("first", "second"), hosts, strict=True):
            out: list[bytes] = []
            state = NnCall(nn, stdout=out.append)
            try:
                args = ["--model", alias, "--n-predict", "12", "--temp", "0"]
                result = template.run(Sandbox(args=args, stdin=FRANCE, stdout=out.append), state)
            finally:
                state.close()
            assert result.exit_code == 0
            answers.append(b"".join(out).decode())
        assert module.gguf_registry().loads - before <= 1
        assert answers[0] == answers[1] and "Paris" in answers[0]
    finally:
        for nn in hosts:
            nn.close()
