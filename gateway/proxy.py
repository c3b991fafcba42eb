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
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from gateway.upstream import UpstreamError, UpstreamPool
from gateway.usage import UsageTap
from runtime.errors import DeadlineExceeded, EdgeInferError

__all__ = ["ForwardResult", "ReplicaFailed", "forward"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Headers that describe one hop, or the client's credentials: never forwarded.
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"authorization",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"proxy-authorization",
        b"content-length",
        b"expect",
    }
)
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
# A request still running after this long gets a task watching for the client to hang
# up (and for its deadline); the many that finish sooner never pay for one. Not
# shorter: waking up during a generation preempts llama.cpp's spinning threads, and a
# 50 ms watcher measurably added 2-3 ms to a SmolLM2 stream's first token.
_WATCH_AFTER = 1.0


class ReplicaFailed(EdgeInferError):
    """The replica went away while serving the request (502)."""

    status = 502
    code = "replica_failed"


@dataclass
class ForwardResult:
    status: int
    started: bool  # whether the response start was sent to the client
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
) -> ForwardResult:
    """Proxy one request. Raises ReplicaFailed / DeadlineExceeded only before anything
    was sent to the client; after that, failures end the response early (for SSE with
    an error event) because the status line is already gone. A client that hangs up
    cancels the work and the upstream connection is closed."""
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
    upstream = [(k, v) for k, v in headers if k not in _DROP_REQUEST]
    try:
        await _forward(pool, host, port, target, method, upstream, body, send, result, tap)
    except asyncio.CancelledError:
        if not (result.disconnected or result.timed_out):
            raise
        task.uncancel()
        if result.timed_out:
            if not result.started:
                raise DeadlineExceeded(
                    f"the model did not answer within {seconds_left:.1f}s"
                ) from None
            await _end(send)
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
) -> None:
    try:
        response = await pool.request(host, port, method, target, headers, body)
    except (UpstreamError, OSError) as exc:
        raise ReplicaFailed(f"the replica failed while serving the request: {exc}") from None
    try:
        result.status = response.status
        out = [(k, v) for k, v in response.headers if k not in _DROP_RESPONSE]
        streaming = (response.header(b"content-type") or b"").startswith(b"text/event-stream")
        if tap is not None:
            tap.headers(
                {
                    k.decode("latin-1"): v.decode("latin-1")
                    for k, v in out
                    if k.startswith(b"x-edgeinfer-")
                }
            )
        whole = None if streaming else response.whole_body()
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        result.started = True
        if whole is not None:  # one body message for an answer that is all here already
            result.first_byte = result.last_byte = time.perf_counter()
            result.chunks = 1
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        try:
            async for chunk in response.chunks():
                now = time.perf_counter()
                result.first_byte = result.first_byte or now
                result.last_byte = now
                result.chunks += 1
                if tap is not None:
                    chunk = tap.chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            if streaming:
                failure = ReplicaFailed(f"the replica stopped mid-stream: {exc}")
                event = {
                    "error": {
                        "message": failure.message,
                        "type": failure.error_type,
                        "code": failure.code,
                    }
                }
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                        "more_body": True,
                    }
                )
        await _end(send)
    finally:
        response.close()
