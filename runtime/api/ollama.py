"""Ollama's API wire types and their converters, so tools built for Ollama (its Python
client, chat front-ends) talk to edgeinfer unchanged.

Follows Ollama's ``docs/api.md``: ``POST /api/chat`` and ``POST /api/generate``
(streamed by default as NDJSON, one JSON object per line, the last with
``"done": true``), ``POST /api/embed``, ``GET /api/tags``, ``POST /api/show``,
``GET /api/ps``; errors are ``{"error": "..."}``. ``format`` (``"json"`` or a JSON
Schema) and ``tools`` are decoded under the chat API's grammar
(``runtime.api.structured``; the arguments of a call are an object here, not a
string). Sampling ``options`` are honoured or refused by name (:data:`OPTIONS_REFUSED`);
the ones that only tune the machine (threads, GPU layers, mmap) are accepted and
change nothing in the answer. Unknown fields are refused, as everywhere in edgeinfer.
``keep_alive`` (:func:`keep_alive_seconds`) is the gateway's: it holds the model's
pool at one replica or more for that long (see ``gateway/app.py``) and takes the field
out before forwarding; a worker called directly has no pool to hold and refuses it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime.api.openai import StreamOptions
from runtime.api.structured import (
    DecodingPlan,
    JsonObjectFormat,
    JsonSchemaFormat,
    ToolCall,
    ToolDef,
    plan_decoding,
    render_tool_calls,
    render_tool_response,
)
from runtime.errors import BadInput, EdgeInferError, ModelNotFound
from runtime.spec.model import ModelSpec, Task
from runtime.spec.types import ChatMessage, GenerateRequest, SamplingParams

__all__ = [
    "OPTIONS_REFUSED",
    "OllamaChatRequest",
    "OllamaEmbedRequest",
    "OllamaGenerateRequest",
    "OllamaShowRequest",
    "capabilities",
    "details",
    "error_body",
    "keep_alive_seconds",
    "list_entry",
    "model_name",
    "now",
    "show_body",
    "tagged",
]

# Option -> (why, values that ask for what edgeinfer does anyway).
OPTIONS_REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "num_ctx": ("the context length is the model's config (options.context_length)", ()),
    "mirostat": ("mirostat sampling is not supported", (0,)),
    "mirostat_tau": ("mirostat sampling is not supported", ()),
    "mirostat_eta": ("mirostat sampling is not supported", ()),
    "tfs_z": ("tail-free sampling is not supported", (1, 1.0)),
    "typical_p": ("typical sampling is not supported", (1, 1.0)),
    "min_p": ("min_p is fixed at 0.05", (0.05,)),
    "repeat_last_n": ("the penalties look at the last 64 tokens", (64,)),
    "penalize_newline": ("penalize_newline is not supported", ()),
}
_REQUEST_REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "keep_alive": ("a worker has no pool to hold; send keep_alive through the gateway", ()),
    "think": ("the models served here do not think", (False,)),
    "images": ("images are not supported", ([],)),
    "suffix": ("suffix (insertion) is not supported", ("",)),
    "template": ("the model's own chat template is used", ("",)),
    "context": ("context arrays are not supported; send the text", ([],)),
    "logprobs": ("logprobs are not supported on this route", (False,)),
    "top_logprobs": ("logprobs are not supported on this route", (0,)),
}


def _check(
    raw: Any, known: set[str], table: dict[str, tuple[str, tuple[Any, ...]]], where: str
) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = {k: v for k, v in raw.items() if v is not None}
    for name, value in raw.items():
        param = f"{where}{name}"[:80]
        if name in known:
            continue
        if name not in table:
            raise BadInput(f"unrecognized field {param!r}", param=param)
        why, neutral = table[name]
        if value not in neutral:
            raise BadInput(f"field {param!r}: {why}", param=param)
    return {k: v for k, v in raw.items() if k in known}


class OllamaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    num_predict: int | None = Field(None, ge=-2, le=131072)
    stop: list[str] | None = Field(None, max_length=4)
    seed: int | None = None
    repeat_penalty: float = Field(1.1, ge=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # Machine tuning: accepted, no effect on the answer.
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    num_thread: int | None = None
    num_keep: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, raw: Any) -> Any:
        return _check(raw, set(cls.model_fields), OPTIONS_REFUSED, "options.")

    def sampling(self, grammar: str | None = None) -> SamplingParams:
        # Ollama's num_predict: -1 is "until done", -2 "until the context is full".
        limit = self.num_predict if self.num_predict and self.num_predict > 0 else None
        if self.stop is not None and any(not s for s in self.stop):
            raise BadInput("stop sequences must not be empty", param="options.stop")
        return SamplingParams(
            max_tokens=limit,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
            grammar=grammar,
        )


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    options: OllamaOptions = Field(default_factory=OllamaOptions)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, raw: Any) -> Any:
        return _check(raw, set(cls.model_fields), _REQUEST_REFUSED, "")


class _Generative(_Base):
    stream: bool = True
    format: Literal["json"] | dict[str, Any] | None = None
    # Not Ollama's: the counts are always in the last line. Accepted so that a gateway
    # that asks every stream for usage can forward these routes unchanged.
    stream_options: StreamOptions | None = None

    def response_format(self) -> Any:
        if self.format == "json":
            return JsonObjectFormat(type="json_object")
        if isinstance(self.format, dict):
            return JsonSchemaFormat.model_validate(
                {"type": "json_schema", "json_schema": {"name": "format", "schema": self.format}}
            )
        return None


class _CallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any]


class _Call(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: _CallFunction
    id: str | None = None


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[_Call] | None = Field(None, max_length=64)
    tool_name: str | None = None
    images: list[Any] | None = None
    thinking: str | None = None

    @model_validator(mode="after")
    def _no_images(self) -> OllamaMessage:
        if self.images:
            raise ValueError("images are not supported")
        return self

    def core(self, i: int) -> ChatMessage:
        if self.role == "tool":
            return ChatMessage("tool", render_tool_response(self.content))
        text = self.content
        if self.tool_calls:
            calls = [
                ToolCall.model_validate(
                    {
                        "id": c.id or f"call_{i}_{k}",
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": json.dumps(c.function.arguments),
                        },
                    }
                )
                for k, c in enumerate(self.tool_calls)
            ]
            text = (text + "\n" if text else "") + render_tool_calls(calls)
        return ChatMessage(self.role, text)


class OllamaChatRequest(_Generative):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=4096)
    tools: list[ToolDef] | None = Field(None, max_length=64)

    def plan(self) -> DecodingPlan:
        return plan_decoding(self.response_format(), self.tools, None, True, schema_path="format")

    def to_core(self, plan: DecodingPlan) -> GenerateRequest:
        if not self.messages:
            raise BadInput("messages must hold at least one message", param="messages")
        messages = [m.core(i) for i, m in enumerate(self.messages)]
        if plan.tools_prompt:
            if messages[0].role == "system":
                messages[0] = ChatMessage("system", f"{messages[0].content}\n\n{plan.tools_prompt}")
            else:
                messages.insert(0, ChatMessage("system", plan.tools_prompt))
        return GenerateRequest(messages=tuple(messages), params=self.options.sampling(plan.grammar))


class OllamaGenerateRequest(_Generative):
    prompt: str = ""
    system: str | None = None
    raw: bool = False

    def plan(self) -> DecodingPlan:
        return plan_decoding(self.response_format(), None, None, True, schema_path="format")

    def to_core(self, plan: DecodingPlan, chat: bool) -> GenerateRequest:
        """``chat``: the model has a chat template, which wraps the prompt unless ``raw``."""
        params = self.options.sampling(plan.grammar)
        if chat and not self.raw:
            messages = [ChatMessage("system", self.system)] if self.system else []
            messages.append(ChatMessage("user", self.prompt))
            return GenerateRequest(messages=tuple(messages), params=params)
        if self.system:
            raise BadInput("system needs a chat model and raw: false", param="system")
        return GenerateRequest(prompt=self.prompt, params=params)


class OllamaEmbedRequest(_Base):
    input: str | list[str] = Field(min_length=1)
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _supported(self) -> OllamaEmbedRequest:
        texts = self.texts()
        if not texts or any(not t for t in texts) or len(texts) > 2048:
            raise ValueError("input must hold 1 to 2048 non-empty strings")
        if not self.truncate:
            raise ValueError("truncate: false is not supported (inputs are truncated)")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class OllamaShowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", max_length=256)
    name: str = Field("", max_length=256, description="the older spelling of model")
    verbose: bool = False

    @property
    def target(self) -> str:
        if not (self.model or self.name):
            raise BadInput("model is required", param="model")
        return self.model or self.name


def model_name(name: str) -> str:
    """Ollama's names carry a tag (``smollm2:latest``); edgeinfer's models have none, so
    ``NAME:latest`` is ``NAME`` and any other tag names no model here (404)."""
    base, colon, tag = name.partition(":")
    if colon and tag != "latest":
        raise ModelNotFound(
            f"model {name!r} not found: models here have one version, tagged 'latest' "
            f"(send {base!r} or '{base}:latest')"
        )
    return base


def tagged(name: str) -> str:
    """A model's name as Ollama lists it, with its tag."""
    return f"{name}:latest"


def details(spec: ModelSpec) -> dict[str, Any]:
    """Ollama's ``details`` of a model: its file format; the rest is unknown here."""
    formats = [f.value for f in spec.artifacts]
    return {
        "parent_model": "",
        "format": formats[0] if formats else "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def capabilities(spec: ModelSpec) -> list[str]:
    """What ``/api/show`` says a model can do, from its task."""
    return {
        Task.CHAT: ["completion", "tools"],
        Task.COMPLETION: ["completion"],
        Task.EMBEDDING: ["embedding"],
    }.get(spec.task, [])


def list_entry(spec: ModelSpec) -> dict[str, Any]:
    """One model of ``/api/tags`` (``/api/ps`` adds ``expires_at`` and ``size_vram``)."""
    return {
        "name": tagged(spec.name),
        "model": tagged(spec.name),
        "modified_at": now(),
        "size": 0,
        "digest": "",
        "details": details(spec),
    }


def show_body(spec: ModelSpec) -> dict[str, Any]:
    """The answer of ``POST /api/show``: no Modelfile or template to show."""
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(spec),
        "model_info": {},
        "capabilities": capabilities(spec),
        "modified_at": now(),
    }


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def error_body(exc: EdgeInferError) -> dict[str, Any]:
    """Ollama's error shape."""
    return {"error": exc.message}


_DURATION = re.compile(r"^(-)?((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: object) -> float:
    """Ollama's ``keep_alive`` in seconds: a number of seconds or a Go duration string
    (``"5m"``, ``"1h30m"``, ``"90s"``, ``"-1"``); negative means for ever (``inf``), 0
    means unload now. :class:`BadInput` naming the field for anything else."""
    if isinstance(value, bool) or value is None:
        raise BadInput("field 'keep_alive': a number of seconds or a duration such as '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (text := value.strip()):
        try:
            seconds = float(text)  # "300", "-1"
        except ValueError:
            if len(text) > 64 or not _DURATION.match(text):
                raise BadInput(
                    f"field 'keep_alive': {value[:64]!r} is not a duration such as '5m', "
                    "'1h30m' or '-1'"
                ) from None
            total = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text))
            seconds = -total if text.startswith("-") else total
    else:
        raise BadInput("field 'keep_alive': a number of seconds or a duration such as '5m'")
    if seconds != seconds:  # NaN
        raise BadInput("field 'keep_alive': not a number")
    return float("inf") if seconds < 0 else seconds
