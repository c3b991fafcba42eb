"""The neutral request and response types every runtime speaks.

Wire formats (OpenAI, OIP v2) convert to and from these in ``runtime.api``; runtimes
never see a wire type, and the wire modules never see a runtime object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.spec.placement import Device

__all__ = [
    "ChatMessage",
    "Embeddings",
    "GenerateRequest",
    "LoadReport",
    "SamplingParams",
    "Tensor",
    "TensorSpec",
    "TokenChunk",
    "TokenLogprob",
]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``max_tokens`` None means "until the context is full or EOS".
    ``grammar`` (llama.cpp GBNF) constrains every sampled token; ``top_logprobs`` asks
    for the log-probability of each sampled token and of that many alternatives
    (None: none at all)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    grammar: str | None = None
    top_logprobs: int | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerateRequest:
    """Either a raw ``prompt`` (completion) or ``messages`` (chat, templated by the model)."""

    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token: its text and raw bytes (a token can end inside a UTF-8
    character), its log-probability under the model, and the most likely alternatives
    as (text, bytes, logprob), best first."""

    token: str
    raw: bytes
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()


@dataclass(frozen=True)
class TokenChunk:
    """A piece of generated text. The last chunk of a stream carries ``finish_reason``
    (``stop``: EOS or a stop sequence; ``length``: max_tokens or context full) and the
    token counts of the whole request. ``logprobs`` covers the tokens whose text is in
    this chunk, when they were asked for."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, dim], L2-normalised
    prompt_tokens: int


@dataclass(frozen=True)
class TensorSpec:
    """Name, OIP v2 datatype and shape (-1 for a dynamic dimension) of a model tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Tensor:
    """A named tensor. ``data`` has the numpy dtype matching ``datatype``; BYTES tensors
    are numpy object arrays of ``bytes``."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass
class LoadReport:
    """Seconds spent in each phase of loading a model (``resolve``, ``load``, ``warmup``)
    and the resident memory it added."""

    phases: dict[str, float] = field(default_factory=dict)
    memory_bytes: int = 0
    device: Device = Device.CPU

    @property
    def total(self) -> float:
        return sum(self.phases.values())
