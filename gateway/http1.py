"""The gateway's own HTTP/1.1 server: ASGI over httptools, one write per response.

Why not uvicorn (which the workers use): the gateway's work per request is small, so
the server around it is a large share of its CPU. Measured here on the ~1 ms endpoint
at 64 clients, uvicorn spent about a third of the gateway's CPU in two
``transport.write`` calls per response (head, then body) and in per-request
bookkeeping the gateway does not need (flow-control objects, access-log plumbing,
header re-validation of what the gateway itself produced). This server speaks the same
ASGI 3 interface, so the app and the tests do not know which server runs them, and it
writes a response's head together with its first (often only) body chunk.

What it does: keep-alive with an idle timeout, pipelined requests answered in order,
``Expect: 100-continue``, chunked request bodies (httptools decodes them), chunked
responses when the app gives no length, read back-pressure on large bodies and write
back-pressure on slow readers, ``http.disconnect`` when a client hangs up, 400 for
malformed requests and 431 for oversized heads, a lifespan, and a graceful shutdown
on SIGTERM/SIGINT (stop accepting, finish requests in flight up to a limit, close idle
connections). What it does not: TLS, HTTP/2, WebSocket upgrades (answered 400).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import logging
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast
from urllib.parse import unquote

import httptools

__all__ = ["Http1Server"]

log = logging.getLogger("edgeinfer.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]

KEEP_ALIVE_SECONDS = 5.0
MAX_HEAD_BYTES = 64 * 1024
# Request body bytes buffered for an app that has not read them yet before the
# server stops reading from the socket (TCP pushes back on the client).
MAX_BUFFERED_BODY = 256 * 1024

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_DISCONNECT: Message = {"type": "http.disconnect"}


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


def _plain(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        _status_line(status)
        + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


class _Cycle:
    """One request and its response: the ``receive`` and ``send`` the app gets."""

    __slots__ = (
        "body",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "continue_sent",
        "delivered",
        "expect_continue",
        "head_only",
        "keep_alive",
        "response_complete",
        "scope",
        "start",
        "started",
        "waiter",
    )

    def __init__(self, conn: _Connection, scope: Scope, keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.continue_sent = False
        self.head_only = scope["method"] == "HEAD"
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # body bytes received and not yet given to the app
        self.complete = False  # the whole request body has arrived
        self.delivered = False  # ... and has been given to the app
        self.waiter: asyncio.Future[None] | None = None
        self.started = False  # the app sent http.response.start
        self.start: Message | None = None  # ... which waits to go out with the body
        self.chunked = False
        self.response_complete = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        conn = self.conn
        while True:
            if conn.closed or self.response_complete:
                return _DISCONNECT
            if not self.delivered and (self.body or self.complete):
                data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                if self.complete:
                    self.delivered = True
                elif conn.reading_paused and conn.cycle is self:
                    conn.resume_reading()
                return {"type": "http.request", "body": data, "more_body": not self.complete}
            if self.expect_continue and not self.continue_sent and not self.complete:
                self.continue_sent = True
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # Body still on its way, or all delivered: wait for more or for a hang-up.
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.start = message
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.response_complete:
            raise RuntimeError("http.response.body outside a response")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.head_only:
            body = b""
        head = b""
        if self.start is not None:
            # The head goes out with the first body message: one write for an answer
            # that fits in one message, with its length when the app did not say.
            head = self._head(self.start, len(body) if not more else None)
            self.start = None
        if self.chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += b"0\r\n\r\n"
        if head:
            body = head + body
        if body and not conn.closed:
            conn.write(body)
            if conn.write_paused:
                await conn.drained()
        if not more:
            self.response_complete = True
            self.wake()
            conn.cycle_done(self)

    def _head(self, start: Message, length: int | None) -> bytes:
        status: int = start["status"]
        parts = [_status_line(status)]
        has_length = False
        for name, value in start.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
            elif lname == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue
            elif lname == b"transfer-encoding":
                continue  # framing is ours to choose
            parts.append(b"%b: %b\r\n" % (name, value))
        if has_length or self.head_only or status < 200 or status in (204, 304):
            pass  # framed already, or no body to frame
        elif length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif self.scope["http_version"] == "1.1":
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:  # HTTP/1.0 has no chunks: the end of the body is the end of the connection
            self.keep_alive = False
        if not self.keep_alive or self.conn.server.closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection; requests on it are answered one at a time, in order."""

    def __init__(self, server: Http1Server) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.reading_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.cycle: _Cycle | None = None  # the request whose body is being read
        self.active: _Cycle | None = None  # the request being answered
        self.queue: collections.deque[_Cycle] = collections.deque()  # pipelined ones
        self.idle_timer: asyncio.TimerHandle | None = None
        self.server_addr: tuple[str, int] | None = None
        self.client_addr: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_addr = _addr(transport.get_extra_info("sockname"))
        self.client_addr = _addr(transport.get_extra_info("peername"))
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.server.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        for cycle in (self.cycle, self.active, *self.queue):
            if cycle is not None:
                cycle.wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; the cause says which it was.
            if isinstance(exc.__context__, _HeadTooLarge):
                self._reject(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            else:
                self._reject(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._url = b""
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = unquote(path)
        method = parser.get_method().decode("ascii")
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self.server_addr,
            "client": self.client_addr,
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        if self.server.state:
            scope["state"] = self.server.state.copy()
        expect = any(k == b"expect" and v.lower() == b"100-continue" for k, v in self._headers)
        cycle = _Cycle(self, scope, parser.should_keep_alive(), expect)
        self.cycle = cycle
        if self.active is None:
            self._start(cycle)
        else:  # pipelined behind a response still being written: answer in order
            self.queue.append(cycle)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return  # a request already answered (e.g. 413) whose body is discarded
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > MAX_BUFFERED_BODY and not self.reading_paused:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None:
            return
        cycle.complete = True
        self.cycle = None
        cycle.wake()

    # -- the request cycle ------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self.active = cycle
        task = self.loop.create_task(self._run(cycle))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except (Exception, asyncio.CancelledError) as exc:
            if not cycle.started and not self.closed:
                log.exception("the app failed before answering %s", cycle.scope["path"])
                self.write(_plain(500, "Internal Server Error"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.exception("the app failed while answering %s", cycle.scope["path"])
            self.close()
            return
        if not cycle.response_complete and not self.closed:
            log.error("the app returned without completing the response to %s", cycle.scope["path"])
            if not cycle.started:
                self.write(_plain(500, "Internal Server Error"))
            self.close()

    def cycle_done(self, cycle: _Cycle) -> None:
        """The response to ``cycle`` has been written in full."""
        self.active = None
        if self.closed:
            return
        if not cycle.keep_alive or not cycle.complete:
            # An unread remainder of the body would be taken for the next request.
            self.close()
            return
        if self.queue:
            self._start(self.queue.popleft())
            if not self.queue and self.reading_paused:
                self.resume_reading()
            return
        if self.server.closing:
            self.close()
            return
        if self.reading_paused:
            self.resume_reading()
        self._arm_idle()

    # -- transport helpers ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drained(self) -> None:
        if not self.write_paused or self.closed:
            return
        self._drain = self.loop.create_future()
        await self._drain

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def idle(self) -> bool:
        return self.active is None and self.cycle is None

    def _arm_idle(self) -> None:
        self.idle_timer = self.loop.call_later(KEEP_ALIVE_SECONDS, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.idle_timer = None
        if self.idle():
            self.close()

    def _reject(self, status: int, reason: str) -> None:
        # Say why, unless a response is half written (the client sees it cut short).
        if self.active is None or not self.active.started:
            self.write(_plain(status, reason))
        self.close()


class _HeadTooLarge(Exception):
    pass


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class Http1Server:
    """Serve an ASGI ``app`` on ``host:port`` until :meth:`request_exit` (or SIGTERM /
    SIGINT, when ``serve(install_signals=True)``)."""

    def __init__(self, app: App, *, host: str, port: int, graceful_seconds: float = 30) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.graceful_seconds = graceful_seconds
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.state: dict[str, Any] = {}
        self.closing = False
        self.started = False
        self.loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)
        self._exit: asyncio.Event | None = None

    def request_exit(self) -> None:
        """Begin a graceful shutdown; safe to call from any thread."""
        if self._exit is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self._exit.set)

    async def serve(self, *, install_signals: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        lifespan = _Lifespan(self.app, self.state)
        await lifespan.startup()
        server = await self.loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=2048
        )
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self._exit.set)
        self.started = True
        log.info("serving on http://%s:%d", self.host, self.port)
        try:
            await self._exit.wait()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self.loop.remove_signal_handler(sig)
            await self._shutdown(server)
            await lifespan.shutdown()

    async def _shutdown(self, server: asyncio.AbstractServer) -> None:
        self.closing = True
        server.close()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.graceful_seconds)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d requests still running at shutdown", len(pending))
                await asyncio.wait(pending, timeout=5)
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


class _Lifespan:
    """Runs the app's ASGI lifespan: startup before serving, shutdown after."""

    def __init__(self, app: App, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True
        self.answered = False

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except Exception:
            log.debug("the app does not run a lifespan", exc_info=True)
        finally:
            if not self.answered:
                # An app without lifespan support returns or raises at once: fine.
                self.supported = False
                await self.outbox.put({"type": "lifespan.unsupported"})

    async def _send(self, message: Message) -> None:
        self.answered = True
        await self.outbox.put(message)

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.outbox.get()
        if reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"application startup failed: {reply.get('message', '')}")

    async def shutdown(self) -> None:
        if self.task is None or not self.supported or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        reply = await self.outbox.get()
        if reply["type"] == "lifespan.shutdown.failed":
            log.error("application shutdown failed: %s", reply.get("message", ""))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)
