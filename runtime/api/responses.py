"""OpenAI's Responses API (``POST /v1/responses``), stateless: wire types, converters
to the neutral request, and the response object and stream events.

Follows OpenAI's API reference for "Create a model response": ``input`` as text or
a list of items (messages with ``input_text``/``output_text`` parts, ``function_call``
and ``function_call_output`` items, so a client can send ``response.output`` back),
``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``text.format``
(structured output), ``tools`` (function tools), ``tool_choice``,
``parallel_tool_calls``, ``stream`` (typed events: ``response.created``,
``response.output_item.added``, ``response.output_text.delta``, ...
``response.completed``). Nothing is stored: ``previous_response_id`` and the other
stateful fields are refused (``REFUSED`` in ``runtime.api.openai``), ``store`` is
accepted and changes nothing. Decoding under a grammar is the chat API's
(``runtime.api.structured``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.api.body import describe_validation, first_field
from runtime.api.openai import BaseRequest, StreamOptions
from runtime.api.structured import (
    DecodingPlan,
    FunctionDef,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    NamedToolChoice,
    TextFormat,
    ToolCall,
    ToolDef,
    plan_decoding,
    render_tool_calls,
    render_tool_response,
)
from runtime.errors import BadInput
from runtime.spec.types import ChatMessage, GenerateRequest, SamplingParams

__all__ = ["ResponseEvents", "ResponsesRequest", "item_id", "response_body"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Part(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class _MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Part]
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class _FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(max_length=128)
    name: str
    arguments: str = Field(max_length=65536)
    id: str | None = None
    status: str | None = None


class _FunctionOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=128)
    output: str
    id: str | None = None
    status: str | None = None


_ITEMS: dict[str, type[BaseModel]] = {
    "message": _MessageItem,
    "function_call": _FunctionCallItem,
    "function_call_output": _FunctionOutputItem,
}


def _item(raw: Any, i: int) -> BaseModel:
    """One ``input`` item, by its ``type`` (``message`` when absent, as OpenAI reads
    ``{"role", "content"}``); errors name the item's field."""
    kind = raw.get("type", "message") if isinstance(raw, dict) else None
    model = _ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadInput(
            f"input item {i}: type must be one of {sorted(_ITEMS)}", param=f"input.{i}.type"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where = first_field(exc)
        raise BadInput(
            f"input item {i}: {describe_validation(exc)}",
            param=f"input.{i}" + (f".{where}" if where else ""),
        ) from None


class _FunctionTool(_Strict):
    type: Literal["function"]
    name: str
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _NamedTool(_Strict):
    type: Literal["function"]
    name: str


class _JsonSchemaText(_Strict):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


_TextFormatIn = Annotated[
    TextFormat | JsonObjectFormat | _JsonSchemaText, Field(discriminator="type")
]


class _TextConfig(_Strict):
    format: _TextFormatIn | None = None


class ResponsesRequest(BaseRequest):
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=131072)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    text: _TextConfig | None = None
    tools: list[_FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedTool | None = None
    parallel_tool_calls: bool = True
    stream: bool = False
    # Usage is always in response.completed; accepted so that a gateway that asks
    # every stream for usage can forward this route unchanged.
    stream_options: StreamOptions | None = None

    @field_validator("input")
    @classmethod
    def _items_of(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str):
            return value
        if not 0 < len(value) <= 4096:
            raise ValueError("input must hold 1 to 4096 items")
        return [_item(raw, i) for i, raw in enumerate(value)]

    def _items(self) -> list[Any]:
        if isinstance(self.input, str):
            return [_MessageItem(role="user", content=self.input)]
        return list(self.input)

    def plan(self) -> DecodingPlan:
        fmt: Any = self.text.format if self.text else None
        if isinstance(fmt, _JsonSchemaText):
            spec = JsonSchemaSpec.model_validate(
                {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
            )
            fmt = JsonSchemaFormat(type="json_schema", json_schema=spec)
        tools = [
            ToolDef(
                type="function",
                function=FunctionDef(
                    name=t.name, description=t.description, parameters=t.parameters
                ),
            )
            for t in self.tools or []
        ] or None
        choice: Any = self.tool_choice
        if isinstance(choice, _NamedTool):
            choice = NamedToolChoice.model_validate(
                {"type": "function", "function": {"name": choice.name}}
            )
        return plan_decoding(
            fmt,
            tools,
            choice,
            self.parallel_tool_calls,
            schema_path="text.format.schema",
            tool_path="tools.{i}",
        )

    def to_core(self, plan: DecodingPlan) -> GenerateRequest:
        messages: list[ChatMessage] = []
        system = "\n\n".join(s for s in (self.instructions, plan.tools_prompt) if s)
        if system:
            messages.append(ChatMessage("system", system))
        for i, item in enumerate(self._items()):
            if isinstance(item, _MessageItem):
                role = "system" if item.role == "developer" else item.role
                messages.append(ChatMessage(role, item.text()))
            elif isinstance(item, _FunctionCallItem):
                call = ToolCall.model_validate(
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                )
                try:
                    messages.append(ChatMessage("assistant", render_tool_calls([call])))
                except BadInput:
                    raise BadInput(
                        "a function_call's arguments are not JSON", param=f"input.{i}.arguments"
                    ) from None
            else:
                messages.append(ChatMessage("tool", render_tool_response(item.output)))
        if not messages:
            raise BadInput("input holds no items", param="input")
        params = SamplingParams(
            max_tokens=self.max_output_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            grammar=plan.grammar,
        )
        return GenerateRequest(messages=tuple(messages), params=params)

    def echo(self) -> dict[str, Any]:
        """The request's settings as a response object repeats them."""
        fmt = self.text.format if self.text and self.text.format else TextFormat(type="text")
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
            "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
            "tools": [t.model_dump(exclude_none=True) for t in self.tools or []],
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)},
            "metadata": self.metadata or {},
            "store": False,
            "previous_response_id": None,
            "truncation": "disabled",
            "error": None,
        }


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def message_item(mid: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": mid,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(call: dict[str, Any], status: str, arguments: str | None = None) -> dict[str, Any]:
    fn = call["function"]
    return {
        "type": "function_call",
        "id": "fc_" + call["id"].removeprefix("call_"),
        "call_id": call["id"],
        "name": fn["name"],
        "arguments": fn["arguments"] if arguments is None else arguments,
        "status": status,
    }


def response_body(
    rid: str,
    model: str,
    request: ResponsesRequest,
    output: list[dict[str, Any]],
    status: str,
    usage: tuple[int, int] | None,
    created: float,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": int(created),
        "status": status,
        "model": model,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": None,
        **request.echo(),
    }
    if usage is not None:
        body["usage"] = {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage[0] + usage[1],
        }
    return body


class ResponseEvents:
    """Builds a stream's typed events in order, numbering them."""

    def __init__(self, rid: str, model: str, request: ResponsesRequest) -> None:
        self.rid, self.model, self.request = rid, model, request
        self.created = time.time()
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None
        self.text = ""

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        data = json.dumps(body, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def response(self, status: str, usage: tuple[int, int] | None = None) -> dict[str, Any]:
        return response_body(
            self.rid, self.model, self.request, self.output, status, usage, self.created
        )

    def start(self) -> list[bytes]:
        snapshot = self.response("in_progress")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def text_delta(self, delta: str) -> list[bytes]:
        out = []
        if self.message is None:
            self.message = message_item(item_id("msg"), "", "in_progress")
            self.message["content"] = []
            self.output.append(self.message)
            index = len(self.output) - 1
            out.append(
                self._event("response.output_item.added", output_index=index, item=self.message)
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self.message["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
        self.text += delta
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message["id"],
                output_index=self.output.index(self.message),
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return out

    def call(self, call: dict[str, Any]) -> list[bytes]:
        index = len(self.output)
        item = call_item(call, "in_progress", arguments="")
        self.output.append(item)
        args = call["function"]["arguments"]
        common = {"item_id": item["id"], "output_index": index}
        out = [
            self._event("response.output_item.added", output_index=index, item=dict(item)),
            self._event("response.function_call_arguments.delta", delta=args, **common),
            self._event("response.function_call_arguments.done", arguments=args, **common),
        ]
        item.update(arguments=args, status="completed")
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def finish(self, status: str, usage: tuple[int, int]) -> list[bytes]:
        out = []
        if self.message is not None:
            index = self.output.index(self.message)
            done = message_item(self.message["id"], self.text, "completed")
            part = done["content"][0]
            common = {"item_id": done["id"], "output_index": index, "content_index": 0}
            out.append(
                self._event("response.output_text.done", text=self.text, logprobs=[], **common)
            )
            out.append(self._event("response.content_part.done", part=part, **common))
            self.message.update(done)
            out.append(self._event("response.output_item.done", output_index=index, item=done))
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=self.response(status, usage)))
        return out

    def error(self, code: str, message: str, param: str | None) -> bytes:
        return self._event("error", code=code, message=message, param=param)
