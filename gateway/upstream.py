"""A lean HTTP/1.1 client for the gateway's hop to its replicas.

The gateway talks only to edgeinfer workers (uvicorn) and Knative Services, over
keep-alive HTTP/1.1, and does little with a response but pass it on. A general client
spends most of the proxy's CPU on what that hop does not need (cookie jars, redirects,
tracing hooks, per-request timeout handles): measured here, aiohttp was a third of the
gateway's CPU under load. This client writes each request in one ``write`` and parses
the answer with httptools (the parser uvicorn uses), over pooled connections.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import httptools

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamResponse", "request_bytes"]

_IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive: never reuse one it may be closing


class UpstreamError(ConnectionError):
    """The connection failed or closed before the response was complete."""


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    _conn: _Connection = field(repr=False)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives. Must be consumed (or ``close`` called)."""
        return self._conn.body()

    def whole_body(self) -> bytes | None:
        """The entire body if it has all arrived already (small answers usually arrive
        with their headers), releasing the connection; else None."""
        conn = self._conn
        if not conn.complete:
            return None
        body = b"".join(conn.chunks)
        conn.chunks.clear()
        conn._release()
        return body

    def close(self) -> None:
        """Abandon the response: the connection is closed, not reused."""
        self._conn.abandon()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[int] = loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from the replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._fail(UpstreamError(f"the replica closed the connection: {exc or 'EOF'}"))

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # Only meaningful while parsing: httptools resets it once the message ends.
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- use --------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            while self.chunks:
                yield self.chunks.popleft()
            if self.complete:
                self._release()
                return
            if self.error is not None:
                raise self.error
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup
            self.wakeup = None

    def _release(self) -> None:
        keep = self.transport is not None and self.keep_alive
        if keep:
            self.idle_since = time.monotonic()
            self.pool._idle[self.key].append(self)
        elif self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        if not self.complete and self.transport is not None:
            self.transport.close()


def request_bytes(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    """One HTTP/1.1 request, head and body, as it goes on the wire."""
    # Knative's ingress routes by Host: no ":80" on the default port (RFC 9110 7.2).
    authority = host if port == 80 else f"{host}:{port}"
    head = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n".encode()]
    for name, value in headers:
        head.append(name + b": " + value + b"\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"".join(head) + body


class UpstreamPool:
    """Keep-alive connections per ``(host, port)``, reused one request at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Connection]] = collections.defaultdict(
            collections.deque
        )

    async def _connection(self, key: tuple[str, int]) -> tuple[_Connection, bool]:
        idle = self._idle[key]
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and now - conn.idle_since < _IDLE_SECONDS:
                conn._reset()
                return conn, True
            if conn.transport is not None:
                conn.transport.close()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self, key), *key)
        return conn, False

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> UpstreamResponse:
        """Send one request; returns once the status line and headers have arrived."""
        payload = request_bytes(host, port, method, target, headers, body)
        for attempt in (0, 1):
            conn, reused = await self._connection((host, port))
            if conn.transport is None:  # closed between connecting and now
                if attempt == 0:
                    continue
                raise UpstreamError("the replica closed the connection at once")
            conn.transport.write(payload)
            try:
                status = await conn.head
            except UpstreamError:
                # A reused connection the server had just closed: nothing was processed,
                # so sending once more on a fresh one is safe.
                if reused and attempt == 0 and not conn.chunks:
                    continue
                raise
            except asyncio.CancelledError:
                # The caller gave up (deadline, or its client hung up) before the answer
                # began: hanging up is how the replica learns to stop the work.
                conn.abandon()
                raise
            return UpstreamResponse(status, conn.headers, conn)
        raise UpstreamError("unreachable")

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
