"""The worker's OpenAI routes: chat, completions (both streamed as SSE, ``n`` choices
one after the other), embeddings, models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from runtime.api import openai
from runtime.api.body import parse_json
from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS
from runtime.api.render import json_response
from runtime.api.structured import ToolCallStream, read_answer
from runtime.errors import EdgeInferError, UnsupportedTask
from runtime.spec.model import Task
from runtime.spec.types import GenerateRequest, TokenChunk, TokenLogprob
from runtime.worker.state import WorkerState, worker_state

__all__ = ["collect", "router"]

router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage_headers(usage: dict[str, int]) -> dict[str, str]:
    return {
        PROMPT_TOKENS: str(usage["prompt_tokens"]),
        COMPLETION_TOKENS: str(usage["completion_tokens"]),
    }


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = worker_state(request)
    return json_response(openai.models_response([state.spec.name], state.created))


@router.get("/v1/models/{name}")
async def get_model(request: Request, name: str) -> Response:
    state = worker_state(request)
    state.check_name(name)
    return json_response(openai.model_object(name, state.created))


def _choices(core: GenerateRequest, n: int) -> list[GenerateRequest]:
    """``n`` generations of one request; with a seed, choice i samples with seed + i,
    so the choices differ and the whole answer is still repeatable."""
    seed = core.params.seed
    if n == 1 or seed is None:
        return [core] * n
    return [replace(core, params=replace(core.params, seed=seed + i)) for i in range(n)]


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
    plan = body.plan()
    cores = _choices(body.to_core(plan), body.n)
    rid = openai.new_id("chatcmpl")
    if body.stream:
        created = int(time.time())
        readers: dict[int, ToolCallStream] = {}

        def event(i: int, chunk: TokenChunk) -> list[dict[str, Any]]:
            delta: dict[str, Any] = {}
            if i not in readers:
                readers[i] = ToolCallStream(plan.mode)
                delta["role"] = "assistant"
            reader = readers[i]
            content, calls = reader.feed(chunk.text)
            finish = chunk.finish_reason
            if finish is not None:
                content += reader.rest()
                if reader.calls and finish == "stop":
                    finish = "tool_calls"
            if content or ("role" in delta and plan.mode == "text"):
                delta["content"] = content
            if calls:
                first = reader.calls - len(calls)
                delta["tool_calls"] = [{"index": first + k, **c} for k, c in enumerate(calls)]
            logprobs = openai.chat_logprobs(chunk.logprobs) if body.logprobs else None
            if not delta and finish is None and not chunk.logprobs:
                return []
            return [
                openai.chat_chunk(
                    rid,
                    body.model,
                    created,
                    index=i,
                    delta=delta,
                    finish_reason=finish,
                    logprobs=logprobs,
                )
            ]

        def usage_event(u: dict[str, int]) -> dict[str, Any]:
            return openai.chat_chunk(rid, body.model, created, usage=u)

        return await _stream(request, state, cores, event, usage_event, body.include_usage)
    results = await _collect_all(request, state, cores)
    answers = []
    for i, (text, last, logprobs) in enumerate(results):
        content, calls = read_answer(text, plan.mode)
        finish = "tool_calls" if calls and last.finish_reason == "stop" else last.finish_reason
        answers.append(openai.Answer(i, content, finish, logprobs, calls))
    totals = _usage(results)
    return json_response(
        openai.chat_response(rid, body.model, answers, totals, body.logprobs),
        headers=_usage_headers(totals),
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
    cores = _choices(core, body.n)
    prefix = core.prompt if body.echo and core.prompt else ""
    if body.stream:
        created = int(time.time())
        offsets: dict[int, int] = {}

        def event(i: int, chunk: TokenChunk) -> list[dict[str, Any]]:
            text = chunk.text
            if i not in offsets:
                offsets[i] = len(prefix)
                text = prefix + text
            logprobs = None
            if body.logprobs is not None:
                logprobs = openai.completion_logprobs(chunk.logprobs, offsets[i])
                offsets[i] += sum(len(t.token) for t in chunk.logprobs)
            return [
                openai.completion_chunk(
                    rid,
                    body.model,
                    created,
                    index=i,
                    text=text,
                    finish_reason=chunk.finish_reason,
                    logprobs=logprobs,
                )
            ]

        def usage_event(u: dict[str, int]) -> dict[str, Any]:
            return openai.completion_chunk(rid, body.model, created, usage=u)

        return await _stream(request, state, cores, event, usage_event, body.include_usage)
    results = await _collect_all(request, state, cores)
    answers = [
        openai.Answer(i, text, last.finish_reason, logprobs)
        for i, (text, last, logprobs) in enumerate(results)
    ]
    totals = _usage(results)
    return json_response(
        openai.completion_response(
            rid, body.model, answers, totals, prefix, body.logprobs is not None
        ),
        headers=_usage_headers(totals),
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


_Result = tuple[str, TokenChunk, tuple[TokenLogprob, ...]]


def _usage(results: list[_Result]) -> dict[str, int]:
    prompt = results[0][1].prompt_tokens if results else 0
    return openai.usage_body(prompt, sum(last.completion_tokens for _, last, _ in results))


async def _collect_all(
    request: Request, state: WorkerState, cores: list[GenerateRequest]
) -> list[_Result]:
    """Each choice in turn (they share the model's instances anyway)."""
    results = []
    for core in cores:
        result = await collect(request, state, core)
        results.append(result)
        if result[1].finish_reason == "cancelled":
            break
    return results


async def collect(request: Request, state: WorkerState, core: GenerateRequest) -> _Result:
    """Run a whole generation; stops it if the client disconnects meanwhile."""
    runtime = await state.wait_ready()
    runtime.check_generation(core)
    start = time.perf_counter()

    async def generate() -> _Result:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        last = TokenChunk("")
        async with aclosing(runtime.stream(core)) as stream:
            async for chunk in stream:
                if not parts and chunk.text:
                    state.metrics.ttft.observe(time.perf_counter() - start)
                parts.append(chunk.text)
                logprobs.extend(chunk.logprobs)
                last = chunk
        return "".join(parts), last, tuple(logprobs)

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
        return "", TokenChunk("", "cancelled"), ()
    text, last, logprobs = work.result()
    state.metrics.count_tokens(last.prompt_tokens, last.completion_tokens)
    return text, last, logprobs


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _stream(
    request: Request,
    state: WorkerState,
    cores: list[GenerateRequest],
    event: Callable[[int, TokenChunk], list[dict[str, Any]]],
    usage: Callable[[dict[str, int]], dict[str, Any]],
    include_usage: bool,
) -> Response:
    """SSE, token by token, one choice after the other. Waits for the first token
    before answering, so an error found up front (context overflow, bad template) is a
    proper 4xx, not a 200 stream."""
    runtime, stream, first, _ = await state.first_token(cores[0])

    async def events() -> AsyncIterator[bytes]:
        prompt, completion = first.prompt_tokens, 0
        finished = False
        try:
            for i, core in enumerate(cores):
                current = stream if i == 0 else runtime.stream(core)
                last = first
                async with aclosing(current):
                    if i == 0:
                        for body in event(0, first):
                            yield openai.sse_event(body)
                    async for chunk in current:
                        last = chunk
                        for body in event(i, chunk):
                            yield openai.sse_event(body)
                completion += last.completion_tokens
            finished = True
        except EdgeInferError as exc:
            yield openai.sse_event(openai.error_body(exc))
            finished = True
        finally:
            if not finished:
                state.metrics.cancelled.inc()
        state.metrics.count_tokens(prompt, completion)
        if include_usage:
            yield openai.sse_event(usage(openai.usage_body(prompt, completion)))
        yield openai.SSE_DONE

    # Completion tokens are only known at the end: they travel in the usage event.
    headers = {**_SSE_HEADERS, PROMPT_TOKENS: str(first.prompt_tokens)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
