"""The worker's ``POST /v1/responses`` (OpenAI's Responses API, stateless), whole or
streamed as typed events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from runtime.api import responses
from runtime.api.body import parse_json
from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS
from runtime.api.render import json_response
from runtime.api.structured import ToolCallStream, read_answer
from runtime.errors import EdgeInferError, UnsupportedTask
from runtime.spec.model import Task
from runtime.spec.types import GenerateRequest, TokenChunk
from runtime.worker.openai_routes import collect
from runtime.worker.state import worker_state

__all__ = ["router"]

router = APIRouter()


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), responses.ResponsesRequest)
    state.check_name(body.model)
    if state.spec.task is not Task.CHAT:
        raise UnsupportedTask(
            f"model {body.model!r} is a {state.spec.task} model; it does not chat"
        )
    plan = body.plan()
    core = body.to_core(plan)
    if body.stream:
        return await _stream(request, body, plan.mode, core)
    rid, created = responses.item_id("resp"), time.time()
    text, last, _ = await collect(request, state, core)
    content, calls = read_answer(text, plan.mode)
    output = [responses.call_item(c, "completed") for c in calls]
    status = _status(last.finish_reason)
    if content:
        output.insert(0, responses.message_item(responses.item_id("msg"), content, status))
    usage = (last.prompt_tokens, last.completion_tokens)
    headers = {PROMPT_TOKENS: str(usage[0]), COMPLETION_TOKENS: str(usage[1])}
    result = responses.response_body(rid, body.model, body, output, status, usage, created)
    return json_response(result, headers=headers)


async def _stream(
    request: Request, body: responses.ResponsesRequest, mode: str, core: GenerateRequest
) -> Response:
    """Typed events as the tokens come. Like the chat stream, waits for the first
    token so that an error found up front is a 4xx, not a 200 stream."""
    state = worker_state(request)
    _, stream, first, _ = await state.first_token(core)
    events = responses.ResponseEvents(responses.item_id("resp"), body.model, body)
    reader = ToolCallStream(mode)

    async def produce() -> AsyncIterator[bytes]:
        last = first
        finished = False
        for event in events.start():
            yield event

        def on(chunk: TokenChunk) -> list[bytes]:
            out: list[bytes] = []
            text, calls = reader.feed(chunk.text)
            if chunk.finish_reason is not None:
                text += reader.rest()
            if text:
                out += events.text_delta(text)
            for call in calls:
                out += events.call(call)
            return out

        try:
            for event in on(first):
                yield event
            async for chunk in stream:
                last = chunk
                for event in on(chunk):
                    yield event
            finished = True
        except EdgeInferError as exc:
            yield events.error(exc.code, exc.message, exc.param)
            finished = True
        finally:
            await stream.aclose()
            if not finished:
                state.metrics.cancelled.inc()
        state.metrics.count_tokens(last.prompt_tokens, last.completion_tokens)
        usage = (last.prompt_tokens, last.completion_tokens)
        for event in events.finish(_status(last.finish_reason), usage):
            yield event

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    headers[PROMPT_TOKENS] = str(first.prompt_tokens)
    return StreamingResponse(produce(), media_type="text/event-stream", headers=headers)
