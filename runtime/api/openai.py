"""OpenAI wire types and their converters.

Follows OpenAI's API reference for ``POST /v1/chat/completions``,
``POST /v1/completions`` (legacy), ``POST /v1/embeddings`` and ``GET /v1/models``:
"Creates a model response for the given chat conversation", streamed as server-sent
events of ``chat.completion.chunk`` objects ending with ``data: [DONE]``; errors are
``{"error": {"message", "type", "param", "code"}}``.

Unknown request fields are ignored (clients send vendor extensions); fields that
would change the meaning of the answer and that edgeinfer does not implement (``n``
other than 1, ``logprobs``, token-array prompts) are refused with a 400 rather than
silently dropped.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.errors import BadInput, EdgeInferError
from runtime.spec.types import ChatMessage, Embeddings, GenerateRequest, SamplingParams, TokenChunk

__all__ = [
    "COMPLETION_TOKENS",
    "PROMPT_TOKENS",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "embedding_response",
    "error_body",
    "models_response",
    "new_id",
]

# Response headers with the token counts of a request (an edgeinfer extension), so a
# gateway can count tokens without parsing bodies. A stream carries only the prompt
# count; its completion count is in the usage event.
PROMPT_TOKENS = "x-edgeinfer-prompt-tokens"
COMPLETION_TOKENS = "x-edgeinfer-completion-tokens"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)


class _Sampling(_Request):
    max_tokens: int | None = Field(None, ge=1, le=131072)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, description="extension (llama.cpp)")
    n: int = Field(1, ge=1, le=1, description="only one choice per request is generated")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(1.0, ge=0.0, le=10.0, description="extension (llama.cpp)")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False):
            raise ValueError("logprobs are not supported by this server")
        return value

    def sampling(self, max_tokens: int | None) -> SamplingParams:
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
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=131072)

    def to_core(self) -> GenerateRequest:
        messages = tuple(
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in self.messages
        )
        limit = self.max_completion_tokens or self.max_tokens
        return GenerateRequest(messages=messages, params=self.sampling(limit))


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=131072)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        # llama.cpp fails on a prompt of no tokens (found by schemathesis).
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt must not be empty")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported by this server")
        return value

    def to_core(self) -> GenerateRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerateRequest(prompt=prompt, params=self.sampling(self.max_tokens))


class EmbeddingRequest(_Request):
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


def _usage(last: TokenChunk) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def chat_response(rid: str, model: str, text: str, last: TokenChunk) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": last.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(last),
    }


def chat_chunk(
    rid: str,
    model: str,
    created: int,
    chunk: TokenChunk | None,
    *,
    role: bool = False,
    usage: bool = False,
) -> dict[str, Any]:
    """One SSE event: a delta (``role`` for the first), or the usage-only final event."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    }
    if usage and chunk is not None:
        body["usage"] = _usage(chunk)
        return body
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if chunk is not None and chunk.text:
        delta["content"] = chunk.text
    elif role:
        delta["content"] = ""
    body["choices"] = [
        {
            "index": 0,
            "delta": delta,
            "finish_reason": chunk.finish_reason if chunk else None,
            "logprobs": None,
        }
    ]
    return body


def completion_response(rid: str, model: str, text: str, last: TokenChunk) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": text, "finish_reason": last.finish_reason, "logprobs": None}
        ],
        "usage": _usage(last),
    }


def completion_chunk(
    rid: str, model: str, created: int, chunk: TokenChunk, *, usage: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [],
    }
    if usage:
        body["usage"] = _usage(chunk)
    else:
        body["choices"] = [
            {"index": 0, "text": chunk.text, "finish_reason": chunk.finish_reason, "logprobs": None}
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


def models_response(names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "edgeinfer"}
            for name in names
        ],
    }


def error_body(exc: EdgeInferError) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": None,
            "code": exc.code,
        }
    }
