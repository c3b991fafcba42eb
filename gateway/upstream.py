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
import select
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import httptools

from runtime.errors import (
    BadInput,
    BadResponseHead,
    ReplicaLost,
    ReplicaUnreachable,
    StrayResponse,
    UpstreamError,
)

__all__ = ["UpstreamPool", "UpstreamResponse", "request_bytes"]

_IDLE_SECONDS = 4.0  # below uvicorn's 5 s keep-alive: never reuse one it may be closing
# A replica's response head: the same bounds the gateway's server puts on a client's.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# Body bytes received from a replica and not yet taken by the proxy before the
# connection stops reading (TCP then pushes back on the replica), so an answer larger
# than the client reads is never buffered whole. Reading resumes below the low mark.
MAX_BUFFERED = 256 * 1024
_LOW_BUFFERED = MAX_BUFFERED // 4
# Methods safe to send twice: the only ones re-sent after their bytes went out.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)  # Linux: the peer shut its side down


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    _conn: _Connection = field(repr=False)
    _use: int = field(repr=False, default=0)  # which request on the connection is ours

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
        """Abandon the response: the connection is closed, not reused (unless the whole
        answer was read and the connection already serves another request)."""
        if self._conn.uses == self._use:
            self._conn.abandon()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = time.monotonic()
        self.busy = False  # a request was written and its response is not all read
        self.paused = False  # reading paused: the proxy has not taken what is here
        self.uses = 0
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.uses += 1
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[int] = loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.head_bytes = 0  # raw bytes received while the head is incomplete
        self.header_bytes = 0  # names and values of the headers parsed
        self.wakeup: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None

    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def peer_closed(self) -> bool:
        """Whether the replica has closed its end already (its FIN, or a reset, waits
        unread): a replica that died while this connection was idle. Asked before a
        connection is reused, so a request is never written to a dead peer, where its
        reset would make the request's fate unknowable."""
        transport = self.transport
        fd = transport.get_extra_info("socket").fileno() if transport is not None else -1
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | _POLLRDHUP)
        return any(
            events & (_POLLRDHUP | select.POLLHUP | select.POLLERR) for _, events in poller.poll(0)
        )

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes nobody asked for (an answer to a request someone smuggled in, or a
            # replica gone wrong): whatever follows on this connection can no longer be
            # matched to a request, so it is never reused.
            self._discard()
            return
        head_pending = not self.head.done()
        if head_pending:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if self.complete:  # the answer was whole; what came after it was not asked for
                self._discard()
            elif isinstance(cause, BadResponseHead):
                self._fail(UpstreamError(f"the replica's response head is refused: {cause}"))
            else:
                self._fail(UpstreamError(f"bad response from the replica: {exc}"))
            return
        # Counted in raw bytes, so a header line that never ends is caught too (the
        # parser reports a header only once it is complete). One read is bounded.
        if head_pending and not self.head.done() and self.head_bytes > MAX_HEAD_BYTES:
            self._fail(UpstreamError(f"the replica's response head is over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy and not self.complete:
            why = f"the replica closed the connection: {exc or 'EOF'}"
            # Before the head was whole the answer has not begun for anyone: whether the
            # request may go elsewhere is the caller's call (``request``).
            self._fail(UpstreamError(why) if self.head.done() else ReplicaLost(why))

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise StrayResponse("bytes after a complete response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self.header_bytes += len(name) + len(value)
        if len(self.headers) > MAX_HEADERS:
            raise BadResponseHead(f"more than {MAX_HEADERS} headers")
        if self.header_bytes > MAX_HEAD_BYTES:
            raise BadResponseHead(f"headers over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise BadResponseHead("a protocol switch (101) nobody asked for")
            # An interim answer (100 Continue, 103 Early Hints): the final one follows.
            self.headers = []
            return
        # Only meaningful while parsing: httptools resets it once the message ends.
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(status)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > MAX_BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head.done():
            return  # the end of an interim (1xx) answer
        self.complete = True
        self._wake()

    # -- use --------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        self.error = error
        self.keep_alive = False
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _discard(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            while self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.buffered <= _LOW_BUFFERED:
                    self._resume()
                yield chunk
            if self.complete:
                self._release()
                return
            if self.error is not None:
                raise self.error
            self._resume()
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup
            self.wakeup = None

    def _release(self) -> None:
        self.busy = False
        self._resume()  # idle, it must still see (and refuse) bytes nobody asked for
        if self.usable() and self.keep_alive:
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
    """One HTTP/1.1 request, head and body, as it goes on the wire. :class:`BadInput`
    when the target or a header holds CR, LF or NUL: the last line of defence against
    a request smuggled inside another (callers refuse such input before)."""
    # Knative's ingress routes by Host: no ":80" on the default port (RFC 9110 7.2).
    authority = host if port == 80 else f"{host}:{port}"
    parts = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n".encode()]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"content-length: %d\r\n\r\n" % len(body))
    head = b"".join(parts)
    # Exactly the line ends written above, and no NUL: three scans at C speed.
    lines = len(headers) + 4
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\x00" in head:
        raise BadInput("a request target or header holds CR, LF or NUL: refused")
    return head + body


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
            if conn.usable() and now - conn.idle_since < _IDLE_SECONDS and not conn.peer_closed():
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
        *,
        replay: bool = False,
    ) -> UpstreamResponse:
        """Send one request; returns once the status line and headers have arrived.
        Once its bytes were written on a reused connection that then failed before a
        byte of the answer came, a request is sent again (on a fresh connection) only
        when its method is idempotent or ``replay`` says it has no side effects (an
        inference call: at worst the work is done twice, and a replica that was killed
        while the connection sat idle never saw it). Such a request whose connection
        (fresh, or the second one) ends before its answer's head was whole raises
        :class:`ReplicaLost`: the caller may send it to another replica once this one
        is known dead. Any other failure is an :class:`UpstreamError`."""
        payload = request_bytes(host, port, method, target, headers, body)
        for attempt in (0, 1):
            conn, reused = await self._connection((host, port))
            if conn.transport is None or not conn.usable():  # closed before a byte went out
                if attempt == 0:
                    continue
                raise ReplicaUnreachable("the replica closed the connection at once")
            conn.busy = True
            conn.transport.write(payload)
            try:
                status = await conn.head
            except UpstreamError as exc:
                # A reused connection the server had just closed. Sending once more is
                # safe only for a request that changes nothing when run twice.
                safe = method in _IDEMPOTENT or replay
                if reused and attempt == 0 and not conn.head_bytes and not conn.chunks and safe:
                    continue
                if isinstance(exc, ReplicaLost) and not safe:
                    raise UpstreamError(exc.message) from None
                raise
            except asyncio.CancelledError:
                # The caller gave up (deadline, or its client hung up) before the answer
                # began: hanging up is how the replica learns to stop the work.
                conn.abandon()
                raise
            return UpstreamResponse(status, conn.headers, conn, conn.uses)
        raise UpstreamError("unreachable")

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
