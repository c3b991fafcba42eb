"""``POST /v1/responses`` on a real SmolLM2 worker through the official ``openai``
client's ``responses`` API: text, instructions, structured output, function tools,
and the typed event stream."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import WorkerProcess
from tests.runtime.worker.conftest import client
from tests.runtime.worker.test_worker_fields import PERSON, WEATHER

pytestmark = pytest.mark.slow

TOOL = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]


def test_text_whole_and_streamed_agree(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    whole = c.responses.create(
        model="smollm2",
        instructions="Answer in one short sentence.",
        input="Name a colour.",
        max_output_tokens=12,
        temperature=0,
    )
    assert whole.status in ("completed", "incomplete") and whole.output_text
    assert whole.usage is not None and 0 < whole.usage.output_tokens <= 12
    events = list(
        c.responses.create(
            model="smollm2",
            instructions="Answer in one short sentence.",
            input="Name a colour.",
            max_output_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-1].response.output_text
    assert kinds.count("response.output_text.delta") > 1, "tokens must arrive one by one"


def test_structured_output_validates(smollm2_worker: WorkerProcess) -> None:
    got = client(smollm2_worker).responses.create(
        model="smollm2",
        input=[{"role": "user", "content": "Describe a person called Ann as JSON."}],
        text={
            "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        },
        max_output_tokens=120,
        temperature=0.8,
    )
    assert got.status == "completed"
    jsonschema.validate(json.loads(got.output_text), PERSON)
    with pytest.raises(openai.BadRequestError) as info:
        client(smollm2_worker).responses.create(
            model="smollm2",
            input="x",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "n",
                    "schema": {"type": "string", "pattern": "a"},
                }
            },
        )
    assert (
        isinstance(info.value.body, dict)
        and info.value.body["param"] == "text.format.schema.pattern"
    )


def test_function_tool_loop_and_refused_state(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    history: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.responses.create(
        model="smollm2",
        input=history,
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C"})
    second = c.responses.create(
        model="smollm2", input=history, tools=[TOOL], tool_choice="none",  # type: ignore[list-item]
        max_output_tokens=16, temperature=0,
    )  # fmt: skip
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]
    streamed = list(
        c.responses.create(
            model="smollm2",
            input=history[:1],
            tools=[TOOL],
            tool_choice="required",  # type: ignore[list-item]
            parallel_tool_calls=False,
            max_output_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    done = [e.arguments for e in streamed if e.type == "response.function_call_arguments.done"]
    assert done == [calls[0].arguments]
    with pytest.raises(openai.BadRequestError) as info:
        c.responses.create(model="smollm2", input="x", previous_response_id="resp_1")
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "previous_response_id"
