"""The Responses and Ollama routes through the gateway (real gateway, real worker):
forwarded by the request's ``model``, streamed through event by event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.gateway.conftest import SMOLLM2, GatewayServer

pytestmark = pytest.mark.slow


def test_responses_and_ollama_chat_through_the_gateway(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    gw = gateway_factory([{**SMOLLM2, "scaling": {"initial-scale": 0}}])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    whole = client.responses.create(
        model="smollm2", input="Name a colour.", max_output_tokens=10, temperature=0
    )
    events: list[Any] = list(
        client.responses.create(
            model="smollm2",
            input="Name a colour.",
            max_output_tokens=10,
            temperature=0,
            stream=True,
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
    # Both answers' tokens counted by the gateway: the whole answer's usage and the
    # stream's, which only its final event carries.
    streamed = events[-1].response.usage
    assert whole.usage is not None and streamed is not None
    text = httpx.get(f"{gw.url}/metrics").text
    expected = whole.usage.output_tokens + streamed.output_tokens
    assert f'edgeinfer_tokens_total{{kind="completion",model="smollm2"}} {float(expected)}' in text
    oc = ollama.Client(host=gw.url)
    options = {"temperature": 0, "num_predict": 10, "repeat_penalty": 1.0}
    messages = [{"role": "user", "content": "Name a colour."}]
    parts = list(oc.chat(model="smollm2", messages=messages, options=options, stream=True))
    said = oc.chat(model="smollm2", messages=messages, options=options)
    assert (
        parts[-1].done and "".join(p.message.content or "" for p in parts) == said.message.content
    )
