"""``UsageTap`` reading token counts from the bytes the workers' own encoders write
(``runtime.api.responses.ResponseEvents``, Ollama's NDJSON lines, OpenAI's usage
event), whole and cut into chunks at every size, and staying bounded."""

from __future__ import annotations

import json

import pytest

from gateway.usage import MAX_EVENT, UsageTap
from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS
from runtime.api.responses import ResponseEvents, ResponsesRequest, response_body


def _responses_stream(usage: tuple[int, int], status: str = "completed") -> bytes:
    request = ResponsesRequest.model_validate({"model": "smollm2", "input": "hi"})
    events = ResponseEvents("resp_1", "smollm2", request)
    out = [*events.start(), *events.text_delta("Blue"), *events.text_delta(" sky")]
    out += events.finish(status, usage)
    return b"".join(out)


def _ndjson(prompt: int, completion: int) -> bytes:
    lines = [
        {"model": "smollm2", "message": {"role": "assistant", "content": "Blue"}, "done": False},
        {"model": "smollm2", "message": {"role": "assistant", "content": ""}, "done": True}
        | {"done_reason": "stop", "prompt_eval_count": prompt, "eval_count": completion},
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _feed(tap: UsageTap, data: bytes, size: int) -> bytes:
    out = b"".join(tap.chunk(data[i : i + size]) for i in range(0, len(data), size))
    tap.end()
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("status", ["completed", "incomplete"])
def test_a_responses_stream_is_counted_from_its_final_event(size: int, status: str) -> None:
    tap = UsageTap()
    tap.headers({"content-type": "text/event-stream", PROMPT_TOKENS: "11"})
    data = _responses_stream((11, 2), status)
    assert _feed(tap, data, size) == data  # passed on unchanged
    assert (tap.prompt, tap.completion) == (11, 2)


@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_an_ollama_ndjson_stream_is_counted_from_its_done_line(size: int) -> None:
    tap = UsageTap()
    tap.headers({"content-type": "application/x-ndjson", PROMPT_TOKENS: "9"})
    data = _ndjson(9, 31)
    assert _feed(tap, data, size) == data
    assert (tap.prompt, tap.completion) == (9, 31)


def test_whole_answers_without_count_headers_are_counted_from_their_body() -> None:
    request = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    whole = response_body("resp_1", "m", request, [], "completed", (4, 5), 0.0)
    for body, counts in [
        (json.dumps(whole).encode(), (4, 5)),
        (_ndjson(6, 7).splitlines()[1], (6, 7)),  # Ollama's stream: false answer
        (b'{"usage": {"prompt_tokens": 8, "completion_tokens": 9}}', (8, 9)),
        (b'{"data": [], "usage": "nonsense"}', (0, 0)),
        (b"not json", (0, 0)),
    ]:
        tap = UsageTap()
        tap.headers({"content-type": "application/json"})
        tap.body(body)
        assert (tap.prompt, tap.completion) == counts, body


def test_an_openai_usage_event_is_counted_and_stripped_when_asked() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content":"Hi"}}],"usage":null}',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        b"data: [DONE]",
    ]
    data = b"\n\n".join(events) + b"\n\n"
    kept = UsageTap()
    assert _feed(kept, data, 1 << 20) == data and (kept.prompt, kept.completion) == (3, 1)
    stripped = UsageTap(strip_usage_event=True)
    out = _feed(stripped, data, 1 << 20)
    assert b"prompt_tokens" not in out and b"[DONE]" in out and b'"Hi"' in out
    assert (stripped.prompt, stripped.completion) == (3, 1)


def test_an_oversized_event_is_skipped_not_held() -> None:
    tap = UsageTap()
    tap.headers({"content-type": "application/x-ndjson"})
    huge = b'{"done": true, "eval_count": 999, "pad": "' + b"x" * (2 * MAX_EVENT) + b'"}\n'
    for i in range(0, len(huge), 65536):
        tap.chunk(huge[i : i + 65536])
        assert len(tap._tail) <= MAX_EVENT + 65536  # never the whole event
    tap.chunk(_ndjson(2, 3))  # the next lines are read again
    tap.end()
    assert (tap.prompt, tap.completion) == (2, 3)


def test_counts_a_replica_makes_up_are_ignored() -> None:
    tap = UsageTap()
    tap.headers({PROMPT_TOKENS: "-1", COMPLETION_TOKENS: "9" * 40})
    tap.body(b'{"done": true, "prompt_eval_count": true, "eval_count": -5}')
    tap.body(b'{"usage": {"prompt_tokens": 1e3, "completion_tokens": "7"}}')
    assert (tap.prompt, tap.completion) == (0, 0)
