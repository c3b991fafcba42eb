"""Forwarding one request to one replica and streaming its answer back, as raw ASGI.

The forwarding client is one pooled ``aiohttp`` session (keep-alive connections to
every replica): measured here, ``httpx`` as the forwarding client gave several times
less throughput. Bodies pass through chunk by chunk as the replica writes them, so
server-sent events reach the client token by token. A client that disconnects cancels
the upstream request, which closes the connection to the worker, which stops the
generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.usage import UsageTap
from runtime.errors import DeadlineExceeded, EdgeInferError

__all__ = ["ForwardResult", "ReplicaFailed", "forward"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Headers that describe one hop, or the client's credentials: never forwarded.
_DROP_REQUEST = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "authorization",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "content-length",
        "expect",
    }
)
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "date", "server", "content-length"}
)


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


async def forward(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    send: Send,
    receive: Receive,
    *,
    seconds_left: float,
    tap: UsageTap | None = None,
) -> ForwardResult:
    """Proxy to ``url``. Raises ReplicaFailed / DeadlineExceeded only before anything
    was sent to the client; after that, failures end the response early (for SSE with
    an error event) because the status line is already gone."""
    result = ForwardResult(status=0, started=False)
    work = asyncio.ensure_future(
        _forward(session, url, method, headers, body, send, seconds_left, result, tap)
    )
    gone = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            work.cancel()
            result.disconnected = True
        gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return result


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _forward(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    send: Send,
    seconds_left: float,
    result: ForwardResult,
    tap: UsageTap | None,
) -> None:
    upstream = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in headers
        if k.decode("latin-1").lower() not in _DROP_REQUEST
    }
    try:
        async with session.request(
            method,
            url,
            data=body,
            headers=upstream,
            timeout=aiohttp.ClientTimeout(total=seconds_left),
            auto_decompress=False,
        ) as response:
            result.status = response.status
            if tap is not None:
                tap.headers(response.headers)
            out = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.items()
                if k.lower() not in _DROP_RESPONSE
            ]
            streaming = response.headers.get("content-type", "").startswith("text/event-stream")
            if not streaming and response.content_length is not None:
                out.append((b"content-length", str(response.content_length).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            result.started = True
            try:
                async for chunk in response.content.iter_any():
                    now = time.perf_counter()
                    result.first_byte = result.first_byte or now
                    result.last_byte = now
                    result.chunks += 1
                    if tap is not None:
                        chunk = tap.chunk(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, TimeoutError) as exc:
                if streaming:
                    failure = ReplicaFailed(f"the replica stopped mid-stream: {exc!r}")
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
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except TimeoutError:
        if result.started:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        raise DeadlineExceeded(f"the model did not answer within {seconds_left:.1f}s") from None
    except aiohttp.ClientError as exc:
        if result.started:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        raise ReplicaFailed(f"the replica failed while serving the request: {exc!r}") from None
