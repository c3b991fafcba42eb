"""The worker's OpenAI routes: chat, completions (both streamed as SSE), embeddings, models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from runtime.api import openai
from runtime.api.body import parse_json
from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS
from runtime.api.render import json_response
from runtime.errors import EdgeInferError, UnsupportedTask
from runtime.spec.model import Task
from runtime.spec.types import GenerateRequest, TokenChunk
from runtime.worker.state import WorkerState, worker_state

__all__ = ["router"]

router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage_headers(last: TokenChunk) -> dict[str, str]:
    return {PROMPT_TOKENS: str(last.prompt_tokens), COMPLETION_TOKENS: str(last.completion_tokens)}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = worker_state(request)
    return json_response(openai.models_response([state.spec.name], state.created))


@router.get("/v1/models/{name}")
async def get_model(request: Request, name: str) -> Response:
    state = worker_state(request)
    state.check_name(name)
    return json_response(openai.models_response([name], state.created)["data"][0])


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), openai.ChatCompletionRequest)
    state.check_name(body.model)
    if state.spec.task is not Task.CHAT:
        raise UnsupportedTask(
            f"model {body.model!r} is a {state.spec.task} model; "
            + ("use /v1/completions" if state.spec.task is Task.COMPLETION else "it does not chat")
        )
    rid = openai.new_id("chatcmpl")
    if body.stream:
        created = int(time.time())
        first = True

        def event(chunk: TokenChunk) -> dict[str, Any]:
            nonlocal first
            role, first = first, False
            return openai.chat_chunk(rid, body.model, created, chunk, role=role)

        def usage(last: TokenChunk) -> dict[str, Any]:
            return openai.chat_chunk(rid, body.model, created, last, usage=True)

        return await _stream(request, state, body.to_core(), event, usage, body.include_usage)
    text, last = await _collect(request, state, body.to_core())
    return json_response(
        openai.chat_response(rid, body.model, text, last), headers=_usage_headers(last)
    )


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), openai.CompletionRequest)
    state.check_name(body.model)
    if not state.spec.generative:
        raise UnsupportedTask(
            f"model {body.model!r} is a {state.spec.task} model; it does not generate text"
        )
    rid = openai.new_id("cmpl")
    core = body.to_core()
    prefix = core.prompt if body.echo and core.prompt else ""
    if body.stream:
        created = int(time.time())
        echoed = not prefix

        def event(chunk: TokenChunk) -> dict[str, Any]:
            nonlocal echoed
            if not echoed:
                echoed = True
                chunk = TokenChunk(prefix + chunk.text, chunk.finish_reason)
            return openai.completion_chunk(rid, body.model, created, chunk)

        def usage(last: TokenChunk) -> dict[str, Any]:
            return openai.completion_chunk(rid, body.model, created, last, usage=True)

        return await _stream(request, state, core, event, usage, body.include_usage)
    text, last = await _collect(request, state, core)
    return json_response(
        openai.completion_response(rid, body.model, prefix + text, last),
        headers=_usage_headers(last),
    )


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), openai.EmbeddingRequest)
    state.check_name(body.model)
    runtime = await state.wait_ready()
    result = await runtime.embed(body.texts())
    state.metrics.count_tokens(result.prompt_tokens, 0)
    return json_response(
        openai.embedding_response(body.model, result, body.encoding_format, body.dimensions),
        headers={PROMPT_TOKENS: str(result.prompt_tokens), COMPLETION_TOKENS: "0"},
    )


async def _collect(
    request: Request, state: WorkerState, core: GenerateRequest
) -> tuple[str, TokenChunk]:
    """Run a whole generation; stops it if the client disconnects meanwhile."""
    runtime = await state.wait_ready()
    start = time.perf_counter()

    async def generate() -> tuple[str, TokenChunk]:
        parts: list[str] = []
        last = TokenChunk("")
        async with aclosing(runtime.stream(core)) as stream:
            async for chunk in stream:
                if not parts and chunk.text:
                    state.metrics.ttft.observe(time.perf_counter() - start)
                parts.append(chunk.text)
                last = chunk
        return "".join(parts), last

    work = asyncio.ensure_future(generate())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():
        work.cancel()
        state.metrics.cancelled.inc()
        await asyncio.gather(work, return_exceptions=True)
        return "", TokenChunk("", "cancelled")
    text, last = work.result()
    state.metrics.count_tokens(last.prompt_tokens, last.completion_tokens)
    return text, last


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _stream(
    request: Request,
    state: WorkerState,
    core: GenerateRequest,
    event: Callable[[TokenChunk], dict[str, Any]],
    usage: Callable[[TokenChunk], dict[str, Any]],
    include_usage: bool,
) -> Response:
    """SSE, token by token. Waits for the first token before answering, so an error
    found up front (context overflow, bad template) is a proper 4xx, not a 200 stream."""
    runtime = await state.wait_ready()
    start = time.perf_counter()
    stream = runtime.stream(core)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = TokenChunk("", "stop")
    except BaseException:
        await stream.aclose()
        raise
    state.metrics.ttft.observe(time.perf_counter() - start)

    async def events() -> AsyncIterator[bytes]:
        last = first
        finished = False
        try:
            async with aclosing(stream):
                yield _sse(event(first))
                async for chunk in stream:
                    last = chunk
                    yield _sse(event(chunk))
            finished = True
        except EdgeInferError as exc:
            yield _sse(openai.error_body(exc))
            finished = True
        finally:
            if not finished:
                state.metrics.cancelled.inc()
        state.metrics.count_tokens(last.prompt_tokens, last.completion_tokens)
        if include_usage:
            yield _sse(usage(last))
        yield b"data: [DONE]\n\n"

    # Completion tokens are only known at the end: they travel in the usage event.
    headers = {**_SSE_HEADERS, PROMPT_TOKENS: str(first.prompt_tokens)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
