"""Forwarding one request to one replica and streaming its answer back, as raw ASGI.

The forwarding client is ``gateway.upstream``: pooled keep-alive connections and
httptools parsing. Measured here, ``httpx`` gave several times less throughput than a
pooled aiohttp session, and aiohttp itself was a third of the gateway's CPU under load.
Bodies pass through chunk by chunk as the replica writes them, so server-sent events
reach the client token by token. A client that disconnects cancels the upstream
request, which closes the connection to the worker, which stops the generation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Send

from gateway.upstream import UpstreamPool
from gateway.usage import UsageTap
from runtime.api import openai
from runtime.errors import (
    DeadlineExceeded,
    EdgeInferError,
    ReplicaDied,
    ReplicaFailed,
    ReplicaLost,
    ReplicaUnreachable,
    ResponseCut,
    ShuttingDown,
    UpstreamError,
)

__all__ = ["ForwardResult", "forward", "upstream_headers"]

# Headers that describe one hop, or the client's credentials: never forwarded. The
# client's own X-Forwarded-* / Forwarded go too: the gateway says who the peer was.
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"authorization",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"content-length",
        b"expect",
        b"forwarded",
        # Written by the gateway itself (gateway.observe): never passed on as sent.
        b"traceparent",
        b"tracestate",
        b"x-request-id",
    }
)
# The replica's x-request-id too: the gateway puts its own on (``response_headers``).
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server", b"x-request-id"}
)
# A request still running after this long gets a task watching for the client to hang
# up (and for its deadline); the many that finish sooner never pay for one. Not
# shorter: waking up during a generation preempts llama.cpp's spinning threads, and a
# 50 ms watcher measurably added 2-3 ms to a SmolLM2 stream's first token.
_WATCH_AFTER = 1.0


def upstream_headers(
    headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None, scheme: str
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the replica gets them: without hop-by-hop ones (the
    standard set and any the client's ``Connection`` names) and forwarding claims the
    client made up; with ``X-Forwarded-For``/``-Proto`` from the real peer."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    out = [
        (k, v)
        for k, v in headers
        if k not in _DROP_REQUEST and k not in named and not k.startswith(b"x-forwarded-")
    ]
    if client is not None:
        out.append((b"x-forwarded-for", client[0].encode("latin-1")))
    out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    return out


@dataclass
class ForwardResult:
    status: int
    started: bool  # whether the response start was sent to the client
    streaming: bool = False  # server-sent events
    first_byte: float | None = None  # perf_counter of the first body chunk
    last_byte: float | None = None
    chunks: int = 0
    disconnected: bool = False
    timed_out: bool = False


async def forward(
    pool: UpstreamPool,
    host: str,
    port: int,
    target: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    send: Send,
    receive: Receive,
    *,
    seconds_left: float,
    tap: UsageTap | None = None,
    progress: Callable[[], None] | None = None,
    response_headers: Sequence[tuple[bytes, bytes]] = (),
) -> ForwardResult:
    """Proxy one request (``headers`` as the replica gets them: ``upstream_headers``);
    ``response_headers`` are added to the answer's head (the request id).
    Raises ReplicaFailed / DeadlineExceeded before anything was sent to the client;
    after that the status line is gone, so a failure raises :class:`ResponseCut` (for
    SSE after an error event) and the server aborts the client's connection: a cut
    answer never looks complete. A client that hangs up cancels the work and the
    upstream connection is closed. ``progress`` is called at each byte of the answer
    (the health watchdog's evidence). A request none of whose bytes reached the replica
    raises :class:`ReplicaUnreachable`, one whose connection ended before an answer's
    head :class:`ReplicaLost`: the caller may send it elsewhere. A stream cut short ends
    with an error event whose ``code`` says why: ``deadline_exceeded``, ``replica_died``
    or ``shutting_down`` (the gateway cancelled it at shutdown)."""
    result = ForwardResult(status=0, started=False)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds_left
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_watch(receive, task, result, deadline))

    # One timer per request: the watcher it starts sees both a client that hangs up and
    # the deadline, so the many requests that finish sooner never pay for either.
    handle = loop.call_at(min(deadline, loop.time() + _WATCH_AFTER), watch)
    try:
        await _forward(
            pool, host, port, target, method, headers, body, send, result, tap, progress,
            response_headers,
        )  # fmt: skip
    except asyncio.CancelledError:
        if not (result.disconnected or result.timed_out):
            if result.streaming:  # cancelled by the server: the gateway shuts down
                await _error_event(send, ShuttingDown("the gateway is shutting down"))
            raise
        task.uncancel()
        if result.timed_out:
            if not result.started:
                raise DeadlineExceeded(
                    f"the model did not answer within {seconds_left:.1f}s"
                ) from None
            late = DeadlineExceeded(f"the model did not finish within {seconds_left:.1f}s")
            if result.streaming:
                await _error_event(send, late)
            raise ResponseCut(late.message, status=late.status) from None
    except Exception as exc:
        if not result.started or isinstance(exc, ResponseCut):
            raise
        # Anything else failing once the status line is out: the answer is cut.
        raise ResponseCut(f"the answer failed after it began: {exc!r}") from exc
    finally:
        handle.cancel()
        if watcher is not None:
            watcher.cancel()
    return result


async def _watch(
    receive: Receive, task: asyncio.Task[Any], result: ForwardResult, deadline: float
) -> None:
    """Cancel ``task`` when the client disconnects or the deadline passes."""
    try:
        async with asyncio.timeout_at(deadline):
            while (await receive())["type"] != "http.disconnect":
                pass
        result.disconnected = True
    except TimeoutError:
        result.timed_out = True
    task.cancel()


async def _end(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _error_event(send: Send, failure: EdgeInferError) -> None:
    """An SSE error event, in OpenAI's error shape, before a stream is cut."""
    body = openai.sse_event(openai.error_body(failure))
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _forward(
    pool: UpstreamPool,
    host: str,
    port: int,
    target: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    send: Send,
    result: ForwardResult,
    tap: UsageTap | None,
    progress: Callable[[], None] | None,
    response_headers: Sequence[tuple[bytes, bytes]],
) -> None:
    try:
        # Every request the gateway forwards is an inference call, free of side effects.
        response = await pool.request(host, port, method, target, headers, body, replay=True)
    except (ReplicaUnreachable, ReplicaLost):  # the caller may send it elsewhere
        raise
    except OSError as exc:  # connecting failed: nothing was written
        raise ReplicaUnreachable(f"the replica could not be reached: {exc}") from None
    except UpstreamError as exc:
        raise ReplicaFailed(f"the replica failed while serving the request: {exc}") from None
    try:
        result.status = response.status
        out = [(k, v) for k, v in response.headers if k not in _DROP_RESPONSE]
        out += response_headers
        streaming = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        result.streaming = streaming
        if tap is not None:
            tap.headers(
                {
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in out
                    if k.startswith(b"x-edgeinfer-") or k == b"content-type"
                }
            )
        whole = None if streaming else response.whole_body()
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        result.started = True
        if progress is not None:
            progress()
        if whole is not None:  # one body message for an answer that is all here already
            result.first_byte = result.last_byte = time.perf_counter()
            result.chunks = 1
            if tap is not None:
                tap.body(whole)
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        try:
            async for chunk in response.chunks():
                now = time.perf_counter()
                result.first_byte = result.first_byte or now
                result.last_byte = now
                result.chunks += 1
                if progress is not None:
                    progress()
                if tap is not None:
                    chunk = tap.chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            failure = ReplicaDied(f"the replica stopped mid-answer: {exc}")
            if streaming:
                await _error_event(send, failure)
            raise ResponseCut(failure.message) from None
        if tap is not None:
            tap.end()
        await _end(send)
    finally:
        response.close()
