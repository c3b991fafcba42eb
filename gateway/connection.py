"""One client connection of the gateway's HTTP/1.1 server (``gateway.http1``, whose
docstring states the contract): the parser's callbacks, the bounds on what a client
sends, the request cycles answered on it in order, and its deadline, which the
server's sweep acts on.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import re
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools
from starlette.types import Message, Scope

from runtime.api.render import error_body
from runtime.errors import EdgeInferError, HttpStatus

if TYPE_CHECKING:
    from gateway.http1 import Http1Server

__all__ = ["ASGI", "Connection"]

log = logging.getLogger("edgeinfer.http")

# Request body bytes buffered for an app that has not read them yet before the
# server stops reading from the socket (TCP pushes back on the client).
MAX_BUFFERED_BODY = 256 * 1024

# Connections closing after a refusal that may linger at once (each holds a descriptor
# for a second or two; they come out of the server's reserve, ``FD_RESERVE``).
MAX_LINGERING = 32

ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_DISCONNECT: Message = {"type": "http.disconnect"}
# Bytes a raw request target may not hold (httptools refuses most of them already),
# and their percent-encoded forms in the path, which a decoded path would carry.
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_ESCAPE = re.compile(rb"%(?:[01][0-9a-fA-F]|7[fF])")
# What a connection's deadline is for (``Connection.deadline_kind``).
_NONE, _IDLE, _HEAD, _BODY, _SLOW_BODY = range(5)


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


def _refusal(status: int, text: str, extra: bytes = b"", path: bytes = b"") -> bytes:
    """A response the server writes itself, then closes, in the error shape of the
    API the request's ``path`` names (OIP's where there is none yet)."""
    return _error_answer(HttpStatus(status, text), extra, path)


def _error_answer(error: EdgeInferError, extra: bytes = b"", path: bytes = b"") -> bytes:
    shape = path.decode("ascii", "replace") or "/v2"
    body = json.dumps(error_body(shape, error)).encode()
    status = error.status
    return (
        _status_line(status)
        + b"content-type: application/json\r\nconnection: close\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def _path_of(cycle: Cycle) -> bytes:
    raw: bytes = cycle.scope.get("raw_path") or b""
    return raw


_REFUSED = _refusal(503, "too many connections; retry shortly", b"retry-after: 1\r\n")
# A connection opened during a graceful shutdown (issue 19): told at once, never served.
_SHUTTING_DOWN = _refusal(503, "the gateway is shutting down; retry", b"retry-after: 1\r\n")


class Cycle:
    """One request and its response: the ``receive`` and ``send`` the app gets."""

    __slots__ = (
        "body",
        "body_bytes",
        "body_since",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "continue_sent",
        "delivered",
        "expect_continue",
        "head_only",
        "keep_alive",
        "length_left",
        "response_complete",
        "scope",
        "start",
        "started",
        "waiter",
    )

    def __init__(self, conn: Connection, scope: Scope, keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.continue_sent = False
        self.head_only = scope["method"] == "HEAD"
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # body bytes received and not yet given to the app
        self.body_bytes = 0  # body bytes received in all
        self.body_since = conn.loop.time()  # the head's end: the body's start
        self.complete = False  # the whole request body has arrived
        self.delivered = False  # ... and has been given to the app
        self.waiter: asyncio.Future[None] | None = None
        self.started = False  # the app sent http.response.start
        self.start: Message | None = None  # ... which waits to go out with the body
        self.chunked = False
        self.length_left: int | None = None  # body bytes the app's Content-Length owes
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
                if conn.deadline_kind in (_BODY, _SLOW_BODY):
                    conn.clear_deadline()
                if self.complete:
                    self.delivered = True
                elif conn.reading_paused and conn.cycle is self:
                    conn.resume_reading()
                return {"type": "http.request", "body": data, "more_body": not self.complete}
            if self.expect_continue and not self.continue_sent and not self.complete:
                self.continue_sent = True
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # Body still on its way, or all delivered: wait for more or for a hang-up.
            if not self.complete and conn.cycle is self:
                conn.expect_body(self)
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
        elif self.length_left is not None:
            left = self.length_left - len(body)
            if left < 0 or (left and not more):
                self._abort_sized(head, body, left)
            self.length_left = left
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

    def _abort_sized(self, head: bytes, body: bytes, left: int) -> None:
        """The app's bytes do not match its Content-Length: send what it owes at most,
        then close, so that nothing is read as this answer's rest or the next's start."""
        conn = self.conn
        assert self.length_left is not None
        conn.write(head + body[: self.length_left])
        conn.close()
        self.response_complete = True
        self.wake()
        conn.cycle_done(self)
        path = self.scope["path"]
        if left < 0:
            raise RuntimeError(f"the answer to {path} is longer than its Content-Length")
        raise RuntimeError(f"the answer to {path} ended {left} bytes short of its Content-Length")

    def _head(self, start: Message, length: int | None) -> bytes:
        status: int = start["status"]
        parts = [_status_line(status)]
        has_length = False
        for name, value in start.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
                if not self.head_only and status >= 200 and status not in (204, 304):
                    self.length_left = _declared_length(value, self.length_left)
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
        if not self.complete:
            # Answered before the whole request body arrived (a 401 before the body is
            # read): the connection closes after this answer (``Connection.cycle_done``),
            # so the head says so and the client does not send its next request on it.
            self.keep_alive = False
        if not self.keep_alive or self.conn.server.closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class Connection(asyncio.Protocol):
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
        self.cycle: Cycle | None = None  # the request whose body is being read
        self.active: Cycle | None = None  # the request being answered
        self.queue: collections.deque[Cycle] = collections.deque()  # pipelined ones
        # When the server's sweep acts on this connection, and why (_IDLE, _HEAD, _BODY).
        self.deadline = float("inf")
        self.deadline_kind = _NONE
        self.server_addr: tuple[str, int] | None = None
        self.client_addr: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # request line and header bytes the parser reported
        self._in_head = False  # a request has begun and its head has not ended
        self._began = False  # ... and it began in the read being parsed now
        self._head_read = 0  # raw bytes read while the head was open (see data_received)
        self._refusal: tuple[int, str] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if server.closing or len(server.connections) >= server.max_connections:
            self.write(_SHUTTING_DOWN if server.closing else _REFUSED)  # before reading
            self._linger()
            return
        self.server_addr = _addr(transport.get_extra_info("sockname"))
        self.client_addr = _addr(transport.get_extra_info("peername"))
        server.connections.add(self)
        self.expect_by(_IDLE, server.keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.server.connections.discard(self)
        self.server.lingering.discard(self)
        for cycle in (self.cycle, self.active, *self.queue):
            if cycle is not None:
                cycle.wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # refused, or being closed: nothing more is parsed
        # A head is counted as it is read, not when httptools reports a finished
        # header (it holds an endless value until its end). A read during which the
        # head stays open held only head bytes if the head was open when it began; the
        # read that began the request is not counted, so the limit may be passed by
        # at most one read, never wrongly reached.
        counted = self._in_head
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            # A callback that refused the request said why; else the parser did.
            refusal = self._refusal or (400, f"malformed HTTP request: {exc}")
            self._reject(*refusal)
            return
        if self._in_head and counted and not self._began:
            self._head_read += len(data)
            if self._head_read > self.server.max_head_bytes:
                self._reject(431, f"request head larger than {self.server.max_head_bytes} bytes")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.expect_by(_HEAD, self.server.head_timeout)
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._began = True
        self._head_read = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.server.max_head_bytes:
            self._refuse(431, f"request head larger than {self.server.max_head_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, httptools reports a chunked body's trailer fields here: they
        # are counted against the same limit and dropped, never taken as headers.
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > self.server.max_head_bytes:
            self._refuse(431, f"request head larger than {self.server.max_head_bytes} bytes")
        if not self._in_head:
            return
        if len(self._headers) >= self.server.max_headers:
            self._refuse(431, f"more than {self.server.max_headers} header fields")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0  # from here on, the trailers' budget
        self.clear_deadline()
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refuse(400, f"HTTP/{version} requests are not supported; send HTTP/1.1")
        url = self._url
        if _BAD_TARGET.search(url):
            self._refuse(400, "the request target holds a space or a control character")
        raw_path, _, query = url.partition(b"?")
        if b"%" in raw_path and _BAD_ESCAPE.search(raw_path):
            self._refuse(400, "the path holds a percent-encoded control character")
        hosts = 0
        expect = False
        for k, v in self._headers:
            if k == b"host":
                hosts += 1
            elif k == b"expect" and v.lower() == b"100-continue":
                expect = True
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._refuse(400, "an HTTP/1.1 request needs exactly one Host header")
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = unquote(path)
        method = parser.get_method().decode("ascii")
        scope: Scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": version,
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
        cycle = Cycle(self, scope, parser.should_keep_alive(), expect)
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
        cycle.body_bytes += len(body)
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

    def _start(self, cycle: Cycle) -> None:
        self.active = cycle
        task = self.loop.create_task(self._run(cycle))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _run(self, cycle: Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except (Exception, asyncio.CancelledError) as exc:
            # Nothing of the answer written yet (its head waits in ``start``): a 500.
            if (not cycle.started or cycle.start is not None) and not self.closed:
                if isinstance(exc, EdgeInferError):
                    # A failure the app raised to cut its answer (a replica that died
                    # after its head came, before a byte of its body): no byte of that
                    # answer reached the client yet, so it gets this error whole.
                    log.warning("%s: %s", cycle.scope["path"], exc.message)
                    self.write(_error_answer(exc, path=_path_of(cycle)))
                else:
                    log.exception("the app failed before answering %s", cycle.scope["path"])
                    self.write(_refusal(500, "Internal Server Error", path=_path_of(cycle)))
            elif isinstance(exc, EdgeInferError):
                # The app cut an answer that had begun (ResponseCut): the way a stream
                # ends when its replica dies, logged by the app already; no traceback.
                log.info("%s: answer cut: %s", cycle.scope["path"], exc.message)
            elif not isinstance(exc, asyncio.CancelledError):
                log.exception("the app failed while answering %s", cycle.scope["path"])
            self.close()
            return
        if not cycle.response_complete and not self.closed:
            log.error("the app returned without completing the response to %s", cycle.scope["path"])
            if not cycle.started:
                self.write(_refusal(500, "Internal Server Error", path=_path_of(cycle)))
            self.close()

    def cycle_done(self, cycle: Cycle) -> None:
        """The response to ``cycle`` has been written in full."""
        self.active = None
        if self.closed:
            return
        if not cycle.complete:
            # An unread remainder of the body would be taken for the next request; and
            # a plain close with it unread would reset the connection, losing the answer.
            self._linger()
            return
        if not cycle.keep_alive:
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
        if self.cycle is None and not self._in_head:  # no next request begun: wait
            self.expect_by(_IDLE, self.server.keep_alive)

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
        return self.active is None and self.cycle is None and not self._in_head

    # -- deadlines (acted on by the server's sweep) -------------------------------------

    def expect_by(self, kind: int, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds
        self.deadline_kind = kind

    def expect_body(self, cycle: Cycle) -> None:
        """The app waits for body bytes: they must come within ``body_timeout``, and,
        once the body is that old, on average at ``min_body_rate`` at least."""
        server = self.server
        self.expect_by(_BODY, server.body_timeout)
        if server.min_body_rate > 0:
            owed = cycle.body_bytes / server.min_body_rate
            slow_at = cycle.body_since + max(server.body_timeout, owed)
            if slow_at < self.deadline:
                self.deadline = slow_at
                self.deadline_kind = _SLOW_BODY

    def clear_deadline(self) -> None:
        self.deadline = float("inf")
        self.deadline_kind = _NONE

    def expire(self) -> None:
        """The deadline passed: close, saying why where no answer is under way."""
        kind = self.deadline_kind
        self.clear_deadline()
        if self.closed:
            if self.transport is not None:  # refused or rejected, done lingering
                self.transport.close()
        elif kind == _IDLE:
            if self.idle():
                self.close()
        elif kind == _HEAD:
            if self.reading_paused:  # we stopped reading it, not the client: wait on
                self.expect_by(_HEAD, self.server.head_timeout)
            else:
                seconds = self.server.head_timeout
                self._reject(408, f"the request head did not arrive within {seconds:g} s")
        elif kind == _BODY:
            seconds = self.server.body_timeout
            self._reject(408, f"no request body bytes arrived for {seconds:g} s")
        elif kind == _SLOW_BODY:
            rate = self.server.min_body_rate
            self._reject(408, f"the request body arrives slower than {rate:g} bytes/s")

    def _refuse(self, status: int, reason: str) -> None:
        """From a parser callback: stop parsing; ``data_received`` answers."""
        self._refusal = (status, reason)
        raise ValueError(reason)  # httptools wraps it in an HttpParserError

    def _reject(self, status: int, reason: str) -> None:
        # Say why, unless the answer to this request has begun, or the fault is in a
        # request pipelined behind one not answered yet (the client would take this
        # answer for that one's): then it sees its connection closed.
        active = self.active
        if active is None or (
            not active.started
            and not self._in_head
            and not self.queue
            and (self.cycle is None or self.cycle is active)
        ):
            path = _path_of(active) if active is not None else self._url.partition(b"?")[0]
            self.write(_refusal(status, reason, path=path))
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal: send FIN, and read and drop what the client still
        sends for a second, so that its unread bytes do not reset the connection and
        lose the answer before the client reads it."""
        self.closed = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for cycle in (self.cycle, self.active, *self.queue):
            if cycle is not None:
                cycle.wake()
        if len(self.server.lingering) >= MAX_LINGERING:
            transport.close()  # under a flood of refusals, descriptors come first
            return
        self.resume_reading()
        transport.write_eof()
        self.server.lingering.add(self)
        self.expect_by(_IDLE, 1.0)


def _declared_length(value: bytes, before: int | None) -> int:
    """An app's Content-Length, which must be one non-negative integer."""
    if not value.isdigit() or (before is not None and before != int(value)):
        raise RuntimeError(f"the app sent an invalid Content-Length {value!r}")
    return int(value)


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None
