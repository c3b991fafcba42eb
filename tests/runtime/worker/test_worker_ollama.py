"""Ollama's API on real workers, driven by the official ``ollama`` Python client:
chat and generate (whole and NDJSON-streamed), ``format`` and ``tools`` under a
grammar, embeddings, the listings, and refusals by name."""

from __future__ import annotations

import json

import httpx
import jsonschema
import numpy as np
import ollama
import pytest

from tests.conftest import WorkerProcess
from tests.runtime.worker.test_worker_fields import PERSON, WEATHER

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}


def test_chat_whole_and_streamed(smollm2_worker: WorkerProcess) -> None:
    c = ollama.Client(host=smollm2_worker.url)
    whole = c.chat(model="smollm2", messages=ASK, options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 12
    assert whole.message.role == "assistant" and whole.message.content
    parts = list(c.chat(model="smollm2:latest", messages=ASK, options=GREEDY, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    # The same greedy answer as the OpenAI route gives.
    r = httpx.post(
        f"{smollm2_worker.url}/v1/chat/completions",
        json={"model": "smollm2", "messages": ASK, "max_tokens": 12, "temperature": 0},
        timeout=60,
    )
    assert r.json()["choices"][0]["message"]["content"] == whole.message.content


def test_generate_format_and_tools(smollm2_worker: WorkerProcess) -> None:
    c = ollama.Client(host=smollm2_worker.url)
    got = c.generate(
        model="smollm2",
        prompt="Describe a person called Ann as JSON.",
        format=PERSON,
        options={"temperature": 0.8, "seed": 5, "num_predict": 120},
    )
    assert got.done_reason == "stop"
    jsonschema.validate(json.loads(got.response), PERSON)
    raw = c.generate(model="smollm2", prompt="1, 2, 3,", raw=True, options=GREEDY)
    assert raw.eval_count == 12 and raw.response
    loaded = c.generate(model="smollm2", prompt="")
    assert loaded.done and loaded.done_reason == "load"
    called = c.chat(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": 80},
    )
    for call in called.message.tool_calls or []:
        assert call.function.name == "get_weather"
        jsonschema.validate(dict(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    if not called.message.tool_calls:
        assert called.message.content and not called.message.content.startswith("<")


def test_listings_and_refusals(smollm2_worker: WorkerProcess) -> None:
    c = ollama.Client(host=smollm2_worker.url)
    # Listed as Ollama lists models, with their tag.
    assert [m.model for m in c.list().models] == ["smollm2:latest"]
    assert [m.model for m in c.ps().models] == ["smollm2:latest"]
    shown = c.show("smollm2")
    assert shown.capabilities == ["completion", "tools"] and shown.details is not None
    for kwargs, param in (
        ({"options": {"mirostat": 2}}, "options.mirostat"),
        ({"options": {"num_ctx": 8192}}, "options.num_ctx"),
        ({"keep_alive": "10m"}, "keep_alive"),
        ({"think": True}, "think"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            c.chat(model="smollm2", messages=ASK, **kwargs)  # type: ignore[arg-type]
        assert info.value.status_code == 400 and param in info.value.error
    with pytest.raises(ollama.ResponseError) as missing:
        c.chat(model="llama3", messages=ASK)
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as tagged:
        c.chat(model="smollm2:7b", messages=ASK)
    assert tagged.value.status_code == 404 and "smollm2:7b" in tagged.value.error


def test_embed(minilm_worker: WorkerProcess) -> None:
    c = ollama.Client(host=minilm_worker.url)
    got = c.embed(model="minilm", input=["a cat sat", "a cat sat", "tax law"])
    vectors = np.asarray(got.embeddings)
    assert vectors.shape == (3, 384) and got.prompt_eval_count
    np.testing.assert_allclose(vectors[0], vectors[1])
    assert vectors[0] @ vectors[2] < vectors[0] @ vectors[1]
    r = httpx.post(
        f"{minilm_worker.url}/v1/embeddings", json={"model": "minilm", "input": "tax law"}
    )
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], vectors[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ollama.ResponseError) as info:
        c.embed(model="minilm", input="x", truncate=False)
    assert info.value.status_code == 400 and "truncate" in info.value.error
