"""OpenAI wire types and their converters.

Follows OpenAI's API reference for ``POST /v1/chat/completions``,
``POST /v1/completions`` (legacy), ``POST /v1/embeddings`` and ``GET /v1/models``:
"Creates a model response for the given chat conversation", streamed as server-sent
events of ``chat.completion.chunk`` objects ending with ``data: [DONE]``; errors are
``{"error": {"message", "type", "param", "code"}}``.

No field is silently dropped: every request field is either a field of the request
models below (honoured), or in :data:`REFUSED` (a 400 naming it, unless it holds its
neutral value), or unknown (a 400 naming it, as OpenAI answers "Unrecognized request
argument"). ``user``, ``metadata``, ``store``, ``service_tier``,
``safety_identifier`` and ``prompt_cache_key`` only describe the caller: they are
checked for type and change nothing in the answer. Structured output and tools are in
``runtime.api.structured``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.api.structured import (
    DecodingPlan,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolDef,
    plan_decoding,
    render_tool_calls,
    render_tool_response,
)
from runtime.errors import BadInput, EdgeInferError
from runtime.spec.types import (
    ChatMessage,
    Embeddings,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "COMPLETION_TOKENS",
    "MAX_CHOICES",
    "PROMPT_TOKENS",
    "REFUSED",
    "SSE_DATA",
    "SSE_DONE",
    "Answer",
    "BaseRequest",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "chat_chunk",
    "chat_logprobs",
    "chat_response",
    "completion_chunk",
    "completion_logprobs",
    "completion_response",
    "embedding_response",
    "error_body",
    "model_object",
    "models_response",
    "new_id",
    "sse_event",
    "usage_body",
]

# Response headers with the token counts of a request (an edgeinfer extension), so a
# gateway can count tokens without parsing bodies. A stream carries only the prompt
# count; its completion count is in the usage event.
PROMPT_TOKENS = "x-edgeinfer-prompt-tokens"
COMPLETION_TOKENS = "x-edgeinfer-completion-tokens"

MAX_CHOICES = 8  # n: each choice is a whole generation

# The one table of OpenAI request fields that edgeinfer knows and does not honour:
# field -> (why, the values that ask for nothing and are accepted). ``null`` is always
# accepted. Every other known field is a field of a request model below.
REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "audio": ("audio output is not supported", ()),
    "modalities": ("only text output is supported", (["text"],)),
    "prediction": ("predicted outputs are not supported", ()),
    "reasoning_effort": ("the models served here do not reason", ()),
    "verbosity": ("verbosity is not supported", ()),
    "web_search_options": ("web search is not supported", ()),
    "logit_bias": ("logit_bias is not supported", ({},)),
    "functions": ("the deprecated functions field is not supported; send tools", ()),
    "function_call": ("the deprecated function_call is not supported; send tool_choice", ()),
    "best_of": ("best_of is not supported; send n", (1,)),
    "suffix": ("suffix (insertion) is not supported", ("",)),
    # The Responses API's stateful and non-text fields (nothing is stored here).
    "previous_response_id": ("responses are not stored here; send the whole input", ()),
    "conversation": ("conversations are not stored here; send the whole input", ()),
    "include": ("include is not supported", ([],)),
    "reasoning": ("the models served here do not reason", ()),
    "background": ("background responses are not supported", (False,)),
    "prompt": ("stored prompt templates are not supported", ()),
    "truncation": ("only truncation 'disabled' is supported", ("disabled",)),
    "max_tool_calls": ("max_tool_calls is not supported", ()),
    "top_logprobs": ("top_logprobs is not supported on this route", ()),
}


class BaseRequest(BaseModel):
    """Fields every request has, and the check of unknown and refused fields."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    # Fields that describe the caller: checked, and they change nothing in the answer.
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=64)
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        # null means "not sent", as in OpenAI's API.
        raw = {k: v for k, v in raw.items() if v is not None}
        for name, value in raw.items():
            if name in cls.model_fields:
                continue
            if name not in REFUSED:
                raise BadInput(
                    f"unrecognized request field {str(name)[:64]!r}", param=str(name)[:64]
                )
            why, neutral = REFUSED[name]
            if value not in neutral:
                raise BadInput(f"field {name!r}: {why}", param=name)
        return raw


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseRequest):
    max_tokens: int | None = Field(None, ge=1, le=131072)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, description="extension (llama.cpp)")
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(1.0, ge=0.0, le=10.0, description="extension (llama.cpp)")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop sequences must hold 1 to 256 characters")
        return stops

    def sampling(
        self, max_tokens: int | None, top_logprobs: int | None, grammar: str | None = None
    ) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
            grammar=grammar,
            top_logprobs=top_logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """A message of the history. ``name`` (a participant's name) is accepted and, as
    the bundled templates have no place for it, not shown to the model."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=128)
    refusal: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, raw: Any) -> Any:
        """null is "not sent" (clients echo a whole response message back, with
        ``audio``, ``function_call`` and ``annotations`` null)."""
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if v is not None}
            for name in ("audio", "function_call", "annotations"):
                if name in raw and raw[name] != []:
                    raise ValueError(f"{name} in a message is not supported")
                raw.pop(name, None)
        return raw

    @model_validator(mode="after")
    def _roles(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(part.text for part in self.content)
        if self.role == "tool":
            return render_tool_response(text)
        if self.tool_calls:
            return (text + "\n" if text else "") + render_tool_calls(self.tool_calls)
        return text


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=131072)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def plan(self) -> DecodingPlan:
        return plan_decoding(
            self.response_format, self.tools, self.tool_choice, self.parallel_tool_calls
        )

    def to_core(self, plan: DecodingPlan) -> GenerateRequest:
        messages = [
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in self.messages
        ]
        if plan.tools_prompt:
            if messages[0].role == "system":
                first = messages[0]
                messages[0] = ChatMessage("system", f"{first.content}\n\n{plan.tools_prompt}")
            else:
                messages.insert(0, ChatMessage("system", plan.tools_prompt))
        limit = self.max_completion_tokens or self.max_tokens
        top = (self.top_logprobs or 0) if self.logprobs else None
        params = self.sampling(limit, top, plan.grammar)
        return GenerateRequest(messages=tuple(messages), params=params)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=131072)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        # llama.cpp fails on a prompt of no tokens (found by schemathesis).
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt must not be empty")
        return value

    @model_validator(mode="after")
    def _no_prompt_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("logprobs of an echoed prompt are not supported")
        return self

    def to_core(self) -> GenerateRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        params = self.sampling(self.max_tokens, self.logprobs)
        return GenerateRequest(prompt=prompt, params=params)


class EmbeddingRequest(BaseRequest):
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[Any]) -> str | list[Any]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must hold at least one string")
        if any(not isinstance(v, str) for v in texts):
            raise ValueError("token arrays are not supported; send strings")
        if any(not v for v in texts):
            raise ValueError("inputs must not be empty strings")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class Answer:
    """One choice's whole answer: its text (None when it is only tool calls), why it
    ended, and the logprobs and tool calls when there are any."""

    index: int
    text: str | None
    finish_reason: str | None
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(tokens: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """Chat's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.raw),
                "top_logprobs": [
                    {"token": text, "logprob": lp, "bytes": list(raw)} for text, raw, lp in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs``; ``offset`` is where the first token's text
    starts in the choice's text."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{text: lp for text, _, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def chat_response(
    rid: str, model: str, answers: list[Answer], usage: dict[str, int], logprobs: bool
) -> dict[str, Any]:
    choices = []
    for a in answers:
        message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None}
        if a.tool_calls:
            message["tool_calls"] = a.tool_calls
        choices.append(
            {
                "index": a.index,
                "message": message,
                "finish_reason": a.finish_reason,
                "logprobs": chat_logprobs(a.logprobs) if logprobs else None,
            }
        )
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def chat_chunk(
    rid: str,
    model: str,
    created: int,
    *,
    index: int = 0,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One SSE event: one choice's delta, or (``usage`` given) the usage-only final event."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    }
    if usage is not None:
        body["usage"] = usage
        return body
    body["choices"] = [
        {
            "index": index,
            "delta": delta or {},
            "finish_reason": finish_reason,
            "logprobs": logprobs,
        }
    ]
    return body


def completion_response(
    rid: str, model: str, answers: list[Answer], usage: dict[str, int], prefix: str, logprobs: bool
) -> dict[str, Any]:
    choices = [
        {
            "index": a.index,
            "text": prefix + (a.text or ""),
            "finish_reason": a.finish_reason,
            "logprobs": completion_logprobs(a.logprobs, len(prefix)) if logprobs else None,
        }
        for a in answers
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def completion_chunk(
    rid: str,
    model: str,
    created: int,
    *,
    index: int = 0,
    text: str = "",
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [],
    }
    if usage is not None:
        body["usage"] = usage
    else:
        body["choices"] = [
            {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
        ]
    return body


def embedding_response(
    model: str, emb: Embeddings, encoding_format: str, dimensions: int | None
) -> dict[str, Any]:
    vectors = emb.vectors
    if dimensions is not None and dimensions != vectors.shape[1]:
        raise BadInput(
            f"model {model!r} makes {vectors.shape[1]}-dimensional embeddings; "
            "dimensions must be omitted or equal to that"
        )
    data = []
    for i, vec in enumerate(vectors):
        value: Any
        if encoding_format == "base64":
            value = base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": emb.prompt_tokens, "total_tokens": emb.prompt_tokens},
    }


def model_object(name: str, created: int) -> dict[str, Any]:
    """One model as ``GET /v1/models/{model}`` answers it (OpenAI's ``model`` object)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "edgeinfer"}


def models_response(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``: a ``list`` of :func:`model_object` s."""
    return {"object": "list", "data": [model_object(name, created) for name in names]}


# Server-sent events as OpenAI streams them: one ``data:`` line of JSON per event, a
# blank line after each, and ``data: [DONE]`` last.
SSE_DATA = b"data: "
SSE_DONE = SSE_DATA + b"[DONE]\n\n"


def sse_event(body: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``body`` (a chunk, the usage, or an error)."""
    return SSE_DATA + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def error_body(exc: EdgeInferError) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": exc.param,
            "code": exc.code,
        }
    }
