"""OpenAI wire types: validation that refuses what would change the answer."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from runtime.api.body import parse_json
from runtime.api.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    embedding_response,
)
from runtime.errors import BadInput
from runtime.spec.types import Embeddings

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


def chat(extra: str = "") -> bytes:
    return CHAT + (b", " + extra.encode() if extra else b"") + b"}"


def test_chat_to_core() -> None:
    req = parse_json(
        chat('"max_tokens": 5, "stop": "x", "seed": 3, "temperature": 0, "vendor_ext": 1'),
        ChatCompletionRequest,
    )
    core = req.to_core()
    assert core.messages is not None and core.messages[0].content == "hi"
    assert core.params.max_tokens == 5 and core.params.stop == ("x",) and core.params.seed == 3


def test_content_parts_and_developer_role() -> None:
    req = parse_json(
        b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"},'
        b'{"role": "user", "content": [{"type": "text", "text": "a"},'
        b' {"type": "text", "text": "b"}]}]}',
        ChatCompletionRequest,
    )
    core = req.to_core()
    assert core.messages is not None
    assert [(m.role, m.content) for m in core.messages] == [("system", "be brief"), ("user", "ab")]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('"max_tokens": 0', "field 'max_tokens': Input should be greater than or equal to 1"),
        ('"max_tokens": -3', "max_tokens"),
        ('"temperature": 3', "field 'temperature'"),
        ('"n": 2', "field 'n'"),
        ('"stop": ["a", "b", "c", "d", "e"]', "at most 4 stop sequences"),
        ('"logprobs": true', "logprobs are not supported"),
        ('"top_p": 0', "field 'top_p'"),
    ],
)
def test_chat_rejects(extra: str, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_json(chat(extra), ChatCompletionRequest)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "body is empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": "m"}', "field 'messages': Field required"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "field 'model': Field required"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
        (b'{"model": "m", "messages": []}', "at least 1 item"),
    ],
)
def test_malformed_bodies(raw: bytes, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_json(raw, ChatCompletionRequest)
    assert fragment in info.value.message


def test_completion_defaults_and_refusals() -> None:
    req = parse_json(b'{"model": "m", "prompt": "x"}', CompletionRequest)
    assert req.to_core().params.max_tokens == 16  # OpenAI's legacy default
    with pytest.raises(BadInput, match="exactly one prompt"):
        parse_json(b'{"model": "m", "prompt": ["a", "b"]}', CompletionRequest)
    with pytest.raises(BadInput, match="suffix"):
        parse_json(b'{"model": "m", "prompt": "a", "suffix": "b"}', CompletionRequest)
    for empty in (b'""', b'[""]'):  # llama.cpp fails on no tokens: a 400 first
        with pytest.raises(BadInput, match="must not be empty"):
            parse_json(b'{"model": "m", "prompt": %s}' % empty, CompletionRequest)


def test_embedding_encodings() -> None:
    vectors = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    emb = Embeddings(vectors=vectors, prompt_tokens=7)
    floats = embedding_response("m", emb, "float", None)
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    np.testing.assert_allclose(floats["data"][1]["embedding"], vectors[1])
    b64 = embedding_response("m", emb, "base64", None)
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, vectors[0])
    with pytest.raises(BadInput, match="4-dimensional"):
        embedding_response("m", emb, "float", 3)
    with pytest.raises(BadInput, match="token arrays"):
        parse_json(b'{"model": "m", "input": [[1, 2]]}', EmbeddingRequest)
