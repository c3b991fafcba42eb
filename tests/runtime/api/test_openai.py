"""OpenAI wire types: validation that refuses what would change the answer."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from runtime.api import openai
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
        chat('"max_tokens": 5, "stop": "x", "seed": 3, "temperature": 0, "user": "u1"'),
        ChatCompletionRequest,
    )
    core = req.to_core(req.plan())
    assert core.messages is not None and core.messages[0].content == "hi"
    assert core.params.max_tokens == 5 and core.params.stop == ("x",) and core.params.seed == 3


def test_content_parts_and_developer_role() -> None:
    req = parse_json(
        b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"},'
        b'{"role": "user", "content": [{"type": "text", "text": "a"},'
        b' {"type": "text", "text": "b"}]}]}',
        ChatCompletionRequest,
    )
    core = req.to_core(req.plan())
    assert core.messages is not None
    assert [(m.role, m.content) for m in core.messages] == [("system", "be brief"), ("user", "ab")]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ('"max_tokens": 0', "field 'max_tokens': Input should be greater than or equal to 1"),
        ('"max_tokens": -3', "max_tokens"),
        ('"temperature": 3', "field 'temperature'"),
        ('"n": 9', "field 'n'"),
        ('"stop": ["a", "b", "c", "d", "e"]', "at most 4 stop sequences"),
        ('"top_logprobs": 2', "top_logprobs needs logprobs"),
        ('"top_logprobs": 21, "logprobs": true', "field 'top_logprobs'"),
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
    with pytest.raises(BadInput, match="suffix") as info:
        parse_json(b'{"model": "m", "prompt": "a", "suffix": "b"}', CompletionRequest)
    assert info.value.param == "suffix"
    with pytest.raises(BadInput, match="echoed prompt"):
        parse_json(b'{"model": "m", "prompt": "a", "echo": true, "logprobs": 1}', CompletionRequest)
    neutral = parse_json(
        b'{"model": "m", "prompt": "a", "suffix": "", "best_of": 1}', CompletionRequest
    )
    assert neutral.to_core().prompt == "a"
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


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ('"vendor_ext": 1', "vendor_ext", "unrecognized request field 'vendor_ext'"),
        ('"audio": {"voice": "alloy"}', "audio", "audio output is not supported"),
        ('"logit_bias": {"50256": -100}', "logit_bias", "logit_bias is not supported"),
        ('"modalities": ["text", "audio"]', "modalities", "only text output"),
        ('"functions": [{"name": "f"}]', "functions", "send tools"),
        ('"stream_options": "yes"', "stream_options", "field 'stream_options'"),
        ('"stream_options": [1]', "stream_options", "field 'stream_options'"),
        ('"stream_options": {"include_usage": "maybe"}', "stream_options.include_usage", ""),
        ('"stream_options": {"other": true}', "stream_options.other", "Extra inputs"),
        ('"metadata": {"k": 1}', "metadata.k", "field 'metadata.k'"),
        ('"user": 5', "user", "field 'user'"),
        ('"response_format": {"type": "xml"}', "response_format", "response_format"),
        ('"tool_choice": "required"', "tool_choice", "needs tools"),
    ],
)
def test_every_field_is_honoured_or_refused_by_name(extra: str, param: str, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        req = parse_json(chat(extra), ChatCompletionRequest)
        req.plan()
    assert info.value.param == param
    assert fragment in info.value.message


def test_caller_fields_and_nulls_are_accepted() -> None:
    req = parse_json(
        chat(
            '"user": "u", "metadata": {"app": "x"}, "store": false, "service_tier": "auto", '
            '"modalities": ["text"], "logit_bias": {}, "audio": null, "temperature": null, '
            '"stream_options": {"include_usage": true}, "stream": true'
        ),
        ChatCompletionRequest,
    )
    assert req.temperature == 1.0 and req.include_usage


def test_tool_history_is_rendered_in_the_documented_format() -> None:
    req = parse_json(
        b'{"model": "m", "tools": [{"type": "function", "function": {"name": "f", '
        b'"parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}],'
        b'"messages": [{"role": "user", "content": "hi"},'
        b'{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",'
        b' "function": {"name": "f", "arguments": "{\\"x\\": 1}"}}]},'
        b'{"role": "tool", "tool_call_id": "c1", "content": "42"}]}',
        ChatCompletionRequest,
    )
    core = req.to_core(req.plan())
    assert core.messages is not None
    roles = [m.role for m in core.messages]
    assert roles == ["system", "user", "assistant", "tool"]
    assert '"name": "f"' in core.messages[0].content and "<tools>" in core.messages[0].content
    assert (
        core.messages[2].content
        == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    )
    assert core.messages[3].content == "<tool_response>\n42\n</tool_response>"
    assert core.params.grammar is not None and "<tool_call>" in core.params.grammar
    with pytest.raises(BadInput, match="tool_call_id"):
        parse_json(
            b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}', ChatCompletionRequest
        )


def test_model_object_is_the_listings_item() -> None:
    listing = openai.models_response(["a", "b"], 7)
    assert listing["object"] == "list"
    assert listing["data"] == [openai.model_object("a", 7), openai.model_object("b", 7)]
    assert openai.model_object("a", 7) == {
        "id": "a",
        "object": "model",
        "created": 7,
        "owned_by": "edgeinfer",
    }


def test_sse_event_is_one_data_line_and_a_blank_line() -> None:
    frame = openai.sse_event({"error": {"message": "a\nb"}})
    assert frame.startswith(b"data: {") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # a newline in the payload stays escaped
    assert json.loads(frame[len(openai.SSE_DATA) :]) == {"error": {"message": "a\nb"}}
    assert openai.SSE_DONE == b"data: [DONE]\n\n"
