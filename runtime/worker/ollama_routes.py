"""The worker's Ollama routes: chat and generate (NDJSON streams by default), embed,
and the model listings (``/api/tags``, ``/api/show``, ``/api/ps``) for its one model."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from runtime.api import ollama
from runtime.api.body import parse_json
from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS
from runtime.api.render import json_response
from runtime.api.structured import ToolCallStream, read_answer
from runtime.errors import EdgeInferError, UnsupportedTask
from runtime.spec.model import Task
from runtime.spec.types import GenerateRequest, TokenChunk
from runtime.worker.openai_routes import collect
from runtime.worker.state import WorkerState, worker_state

__all__ = ["router"]

router = APIRouter()


def _check_model(state: WorkerState, name: str) -> None:
    state.check_name(ollama.model_name(name))


def _counts(last: TokenChunk, seconds: float) -> dict[str, Any]:
    return {
        "done_reason": last.finish_reason or "stop",
        "total_duration": int(seconds * 1e9),
        "load_duration": 0,
        "prompt_eval_count": last.prompt_tokens,
        "eval_count": last.completion_tokens,
    }


def _calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped calls as Ollama writes them: arguments as an object."""
    return [
        {
            "id": c["id"],
            "function": {
                "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"]),
            },
        }
        for c in calls
    ]


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), ollama.OllamaChatRequest)
    _check_model(state, body.model)
    if state.spec.task is not Task.CHAT:
        raise UnsupportedTask(
            f"model {body.model!r} is a {state.spec.task} model; it does not chat"
        )
    plan = body.plan()
    core = body.to_core(plan)

    def line(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = _calls(calls)
        return {"model": body.model, "created_at": ollama.now(), "message": message, "done": False}

    if body.stream:
        return await _stream(request, state, core, plan.mode, line)
    start = time.perf_counter()
    text, last, _ = await collect(request, state, core)
    content, calls = read_answer(text, plan.mode)
    out = line(content or "", calls)
    out.update(done=True, **_counts(last, time.perf_counter() - start))
    return json_response(out, headers=_headers(last))


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), ollama.OllamaGenerateRequest)
    _check_model(state, body.model)
    if not state.spec.generative:
        raise UnsupportedTask(f"model {body.model!r} is a {state.spec.task} model")
    if not body.prompt:  # Ollama's "load the model" request
        await state.wait_ready()
        done = {"model": body.model, "created_at": ollama.now(), "response": "", "done": True}
        return json_response({**done, "done_reason": "load"})
    plan = body.plan()
    core = body.to_core(plan, chat=state.spec.task is Task.CHAT)

    def line(text: str, _calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": body.model, "created_at": ollama.now(), "response": text, "done": False}

    if body.stream:
        return await _stream(request, state, core, "text", line)
    start = time.perf_counter()
    text, last, _ = await collect(request, state, core)
    out = line(text, [])
    out.update(done=True, **_counts(last, time.perf_counter() - start))
    return json_response(out, headers=_headers(last))


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), ollama.OllamaEmbedRequest)
    _check_model(state, body.model)
    runtime = await state.wait_ready()
    start = time.perf_counter()
    result = await runtime.embed(body.texts())
    if body.dimensions is not None and body.dimensions != result.vectors.shape[1]:
        raise UnsupportedTask(
            f"model {body.model!r} makes {result.vectors.shape[1]}-dimensional embeddings; "
            "dimensions must be omitted or equal to that"
        )
    state.metrics.count_tokens(result.prompt_tokens, 0)
    out = {
        "model": body.model,
        "embeddings": result.vectors.tolist(),
        "total_duration": int((time.perf_counter() - start) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
    }
    return json_response(out, headers={PROMPT_TOKENS: str(result.prompt_tokens)})


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    return json_response({"models": [ollama.list_entry(worker_state(request).spec)]})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    state = worker_state(request)
    loaded = [{**ollama.list_entry(state.spec), "size_vram": 0}] if state.ready else []
    return json_response({"models": loaded})


@router.post("/api/show")
async def show(request: Request) -> Response:
    state = worker_state(request)
    body = parse_json(await request.body(), ollama.OllamaShowRequest)
    _check_model(state, body.target)
    return json_response(ollama.show_body(state.spec))


def _headers(last: TokenChunk) -> dict[str, str]:
    return {PROMPT_TOKENS: str(last.prompt_tokens), COMPLETION_TOKENS: str(last.completion_tokens)}


async def _stream(
    request: Request,
    state: WorkerState,
    core: GenerateRequest,
    mode: str,
    line: Any,
) -> Response:
    """NDJSON, a line per token; the last line has ``done: true`` and the counts.
    Waits for the first token, so an error found up front is a 4xx."""
    _, stream, first, start = await state.first_token(core)
    reader = ToolCallStream(mode)

    def encode(body: dict[str, Any]) -> bytes:
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    async def produce() -> AsyncIterator[bytes]:
        last = first
        finished = False
        try:
            chunk: TokenChunk | None = first
            while chunk is not None:
                last = chunk
                text, calls = reader.feed(chunk.text)
                if chunk.finish_reason is not None:
                    text += reader.rest()
                if text or calls:
                    yield encode(line(text, calls))
                chunk = await anext(stream, None)
            finished = True
        except EdgeInferError as exc:
            yield encode(ollama.error_body(exc))
            finished = True
        finally:
            await stream.aclose()
            if not finished:
                state.metrics.cancelled.inc()
        state.metrics.count_tokens(last.prompt_tokens, last.completion_tokens)
        final = line("", [])
        final.update(done=True, **_counts(last, time.perf_counter() - start))
        yield encode(final)

    headers = {"Cache-Control": "no-cache", PROMPT_TOKENS: str(first.prompt_tokens)}
    return StreamingResponse(produce(), media_type="application/x-ndjson", headers=headers)
