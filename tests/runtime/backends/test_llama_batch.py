"""Continuous batching (runtime/backends/llama_batch.py) on the real SmolLM2 under
llama-cpp-python: requests with different sampling run together in one context and
each gets what it gets alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime.backends.llama import LlamaRuntime
from runtime.errors import BadInput
from runtime.settings import Settings
from runtime.spec.model import load_config
from runtime.spec.placement import Device
from runtime.spec.types import GenerateRequest, SamplingParams

pytestmark = pytest.mark.slow

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
YES_NO = 'root ::= "yes" | "no"'


async def loaded(parallel: int) -> LlamaRuntime:
    config = load_config()
    spec = config.get("smollm2")
    assert spec is not None
    spec = spec.model_copy(
        update={"options": spec.options.model_copy(update={"parallel": parallel})}
    )
    rt = LlamaRuntime(spec, device=Device.CPU, settings=Settings(), base_dir=config.base_dir)
    await rt.load()
    return rt


async def generate(rt: LlamaRuntime, prompt: str, **params: Any) -> tuple[str, str, int, int]:
    """(text, finish reason, completion tokens, logprob entries)."""
    text, finish, used, logprobs = "", "", 0, 0
    request = GenerateRequest(prompt=prompt, params=SamplingParams(**params))
    async for chunk in rt.stream(request):
        text += chunk.text
        logprobs += len(chunk.logprobs)
        if chunk.finish_reason:
            finish, used = chunk.finish_reason, chunk.completion_tokens or 0
    return text, finish, used, logprobs


ASKS: list[tuple[str, dict[str, Any]]] = [
    (COUNTING, {"max_tokens": 10, "temperature": 0}),
    ("The capital of France is", {"max_tokens": 12, "temperature": 0.9, "seed": 5}),
    ("Is the sky blue? Answer:", {"max_tokens": 4, "temperature": 0, "grammar": YES_NO}),
    (COUNTING, {"max_tokens": 30, "temperature": 0, "stop": ("14",)}),
    ("Once upon a time", {"max_tokens": 6, "temperature": 0, "top_logprobs": 2}),
    ("Hello", {"max_tokens": 8, "temperature": 0.7, "top_p": 0.5, "top_k": 5, "seed": 1}),
]


def test_sequences_decoded_together_each_get_their_own_sampling() -> None:
    async def scenario() -> None:
        rt = await loaded(parallel=4)
        try:
            assert rt._engine is not None
            alone = [await generate(rt, p, **kw) for p, kw in ASKS]
            assert rt._engine.peak == 1
            together = await asyncio.gather(*(generate(rt, p, **kw) for p, kw in ASKS))
            assert rt._engine.peak == 4  # four at once; the other two joined as slots freed
            assert list(together) == alone
            counting, _, yes_no, stopped, logprobs, _ = alone
            assert counting[0].strip().startswith("11, 12") and counting[1:3] == ("length", 10)
            assert yes_no[0] in ("yes", "no") and yes_no[1] == "stop"
            assert stopped[1] == "stop" and "13" in stopped[0] and "14" not in stopped[0]
            assert logprobs[3] == 6  # one entry per token
        finally:
            await rt.unload()

    asyncio.run(scenario())


def test_a_bad_grammar_fails_its_request_only_and_the_engine_keeps_serving() -> None:
    async def scenario() -> None:
        rt = await loaded(parallel=2)
        try:
            good = asyncio.ensure_future(generate(rt, COUNTING, max_tokens=6, temperature=0))
            with pytest.raises(BadInput, match="did not parse"):
                await generate(rt, "x", max_tokens=3, grammar="root ::= (")
            text, finish, used, _ = await good
            assert (finish, used) == ("length", 6) and text.strip().startswith("11")
        finally:
            await rt.unload()

    asyncio.run(scenario())


def test_a_stream_closed_early_frees_its_sequence() -> None:
    async def scenario() -> None:
        rt = await loaded(parallel=1 + 1)
        try:
            for _ in range(3):  # more than there are sequences: each must be given back
                stream = rt.stream(
                    GenerateRequest(prompt=COUNTING, params=SamplingParams(max_tokens=500))
                )
                await anext(stream)
                await stream.aclose()
            text, finish, used, _ = await generate(rt, "Hi", max_tokens=3, temperature=0)
            assert (finish, used) == ("length", 3) and text
            # 3 streams cut after a token or so each (500 asked), 3 tokens, 1 to warm up.
            assert rt.tokens_generated < 40, rt.tokens_generated
        finally:
            await rt.unload()

    asyncio.run(scenario())
