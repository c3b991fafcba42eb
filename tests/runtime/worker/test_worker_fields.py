"""What app developers send, against a real SmolLM2 worker and the official ``openai``
client: every field honoured or refused by name, structured output and tool calls
decoded under a grammar (checked with ``jsonschema``), logprobs, ``n``, stop lists.
SmolLM2 is small: these tests check that the constraint holds, not that the answer
is wise."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import WorkerProcess
from tests.runtime.worker.conftest import client

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "colour": {"enum": ["red", "green", "blue"]},
        "pets": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}
ASK_PERSON = [{"role": "user", "content": "Describe a person called Ann as JSON."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 16}},
            "required": ["zone"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {
    "get_weather": WEATHER["function"]["parameters"],
    "get_time": TIME["function"]["parameters"],
}  # type: ignore[index]


def person_format(strict: bool) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": strict},
    }


def post(worker: WorkerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"vendor_thing": 1}, "vendor_thing"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "number", "minimum": 1}},
                }
            },
            "response_format.json_schema.schema.minimum",
        ),
        ({"stream": True, "stream_options": "yes"}, "stream_options"),
        ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
    ],
)
def test_fields_not_honoured_are_refused_by_name(
    smollm2_worker: WorkerProcess, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(smollm2_worker).chat.completions.create(
            model="smollm2",
            messages=ASK_PERSON,  # type: ignore[arg-type]
            max_tokens=4,
            extra_body=extra,
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and param.split(".")[-1] in error["message"]
    r = post(smollm2_worker, {"model": "smollm2", "messages": ASK_PERSON, "max_tokens": 2, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_caller_fields_are_accepted(smollm2_worker: WorkerProcess) -> None:
    got = client(smollm2_worker).chat.completions.create(
        model="smollm2",
        messages=ASK_PERSON,  # type: ignore[arg-type]
        max_completion_tokens=3,
        user="user-1",
        metadata={"app": "tests"},
        store=False,
    )
    assert got.usage is not None and got.usage.completion_tokens == 3
    assert got.choices[0].finish_reason == "length"


@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_output_validates_whole_and_streamed(
    smollm2_worker: WorkerProcess, strict: bool
) -> None:
    c = client(smollm2_worker)
    for seed in (1, 2):
        got = c.chat.completions.create(
            model="smollm2",
            messages=ASK_PERSON,  # type: ignore[arg-type]
            response_format=person_format(strict),  # type: ignore[arg-type]
            max_tokens=120,
            temperature=0.8,
            seed=seed,
        )
        assert got.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(got.choices[0].message.content or ""), PERSON)
    chunks = c.chat.completions.create(
        model="smollm2",
        messages=ASK_PERSON,  # type: ignore[arg-type]
        response_format=person_format(strict),  # type: ignore[arg-type]
        max_tokens=120,
        temperature=0.8,
        seed=2,
        stream=True,
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), PERSON)
    assert text == got.choices[0].message.content  # same seed, same answer


def test_json_object_output_parses(smollm2_worker: WorkerProcess) -> None:
    got = client(smollm2_worker).chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": 'Give Ann\'s city as JSON: {"city": ...}'}],
        response_format={"type": "json_object"},
        max_tokens=80,
        temperature=0,
    )
    assert got.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(got.choices[0].message.content or ""), dict)


def test_chat_logprobs_whole_and_streamed(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    got = c.chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = got.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert got.usage is not None and len(tokens) == got.usage.completion_tokens == 6
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy without penalties picks the most likely token.
        assert t.top_logprobs[0].token == t.token and t.logprob == pytest.approx(tops[0])
        assert t.logprob <= 0 and bytes(t.bytes or []).decode() == t.token
    streamed = c.chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    seen = []
    for ch in streamed:
        if ch.choices and ch.choices[0].logprobs:
            seen.extend(ch.choices[0].logprobs.content or [])
    assert [t.token for t in seen] == [t.token for t in tokens]
    assert all(t.top_logprobs == [] for t in seen)


def test_completion_logprobs_n_and_stop_list(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    got = c.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=5, temperature=0, logprobs=2
    )
    lp = got.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == got.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(len(d) == 2 for d in lp.top_logprobs or [])
    stopped = c.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=["9", "8"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert "7" in stopped.choices[0].text and "8" not in stopped.choices[0].text

    def sample() -> Any:
        return c.completions.create(
            model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=1.3, n=3, seed=11
        )

    first, again = sample(), sample()
    texts = [ch.text for ch in first.choices]
    assert [ch.index for ch in first.choices] == [0, 1, 2]
    assert texts == [ch.text for ch in again.choices], "a seed makes all n choices repeatable"
    assert len(set(texts)) > 1, "the n choices are not independent samples"
    assert first.usage is not None and first.usage.completion_tokens == 24
    streamed = c.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=1.3, n=3, seed=11,
        stream=True,
    )  # fmt: skip
    joined = ["", "", ""]
    for ch in streamed:
        for part in ch.choices:
            joined[part.index] += part.text
    assert joined == texts


def _check_calls(calls: Any, allowed: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_openai_tool_calling_loop(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    messages: list[Any] = list(ASK_WEATHER)
    rounds = 0
    while True:
        rounds += 1
        got = c.chat.completions.create(
            model="smollm2",
            messages=messages,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required" if rounds == 1 else "none",
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=0,
        )
        message = got.choices[0].message
        if not message.tool_calls:
            break
        assert got.choices[0].finish_reason == "tool_calls" and message.content is None
        assert len(message.tool_calls) == 1
        _check_calls(message.tool_calls, {"get_weather", "get_time"})
        messages.append(message)
        for call in message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
    assert rounds == 2 and got.choices[0].message.content
    assert got.choices[0].finish_reason in ("stop", "length")


def test_named_parallel_and_auto_tool_choice(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    named = c.chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    assert named.choices[0].finish_reason == "tool_calls"
    _check_calls(named.choices[0].message.tool_calls, {"get_time"})
    assert len(named.choices[0].message.tool_calls or []) == 1
    parallel = c.chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=80,
        temperature=0,
    )
    # Up to 8 calls; one cut short by max_tokens is dropped, the whole ones stand.
    _check_calls(parallel.choices[0].message.tool_calls, {"get_weather", "get_time"})
    for seed in (3, 4):
        auto = c.chat.completions.create(
            model="smollm2",
            messages=ASK_WEATHER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            max_tokens=40,
            temperature=1.0,
            seed=seed,
        )
        message = auto.choices[0].message
        if message.tool_calls:
            _check_calls(message.tool_calls, {"get_weather"})
        else:
            assert message.content and not message.content.startswith("<")


def test_streamed_tool_calls_assemble_like_openai(smollm2_worker: WorkerProcess) -> None:
    chunks = list(
        client(smollm2_worker).chat.completions.create(
            model="smollm2",
            messages=ASK_WEATHER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    calls: dict[int, dict[str, str]] = {}
    for ch in chunks:
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += d.id or ""
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
    finals = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finals == ["tool_calls"]
    assert len(calls) == 1 and calls[0]["id"] and calls[0]["name"] == "get_weather"
    for e in calls.values():
        jsonschema.validate(json.loads(e["arguments"]), WEATHER["function"]["parameters"])  # type: ignore[index]
