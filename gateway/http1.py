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

Every client is a stranger, so everything it controls is bounded (``ServerConfig``,
the ``gateway: server:`` section): the head's raw bytes, counted as they are read, not
when the parser reports a finished header (431), the number of header fields (431),
the time from a request's first byte to its head's end (408), the time without body
bytes while the app waits for them (408, or a close once the answer began), the idle
time of a kept-alive connection, and the number of open connections (past it a new
one gets a 503 with ``Retry-After`` and ``connection: close``, written before reading
anything). One timer per server sweeps the connections' deadlines, so a request
allocates no timer. A request target holding spaces or control characters, raw or
percent-encoded (``%00``-``%1f``, ``%7f``) in the path, a missing or repeated ``Host``
on HTTP/1.1, and HTTP/0.9 request lines are 400s. ``scope["raw_path"]`` is the path
exactly as the client sent it, still percent-encoded (what a proxy forwards);
``scope["path"]`` is decoded. Chunked trailers are read and dropped: they never reach
``scope["headers"]``. ``Expect: 100-continue`` is answered when the app first calls
``receive()``, so an app that refuses from the head (401, 413) does so before the
client sends its body.

The contract for an app whose answer fails half-way (a proxy whose upstream is cut):
**raise** from the app after ``http.response.start`` went out, as plain ASGI has it.
The server then aborts the client connection: a chunked answer gets no final
``0\r\n\r\n`` chunk and a sized one stays short, and the connection is closed, so the
client sees the answer was cut and nothing else is read as its rest. Likewise, an app
whose bytes do not match the ``Content-Length`` it gave gets its connection closed
(the excess is not sent; the app's ``send`` raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from typing import Any, cast

from starlette.types import ASGIApp, Message

from gateway.config import ServerConfig
from gateway.connection import ASGI, Connection

__all__ = ["Http1Server", "connection_cap"]

log = logging.getLogger("edgeinfer.http")

# File descriptors kept back from client connections when the cap comes from the fd
# limit (listening socket, logs, model files, the supervisor's pipes).
FD_RESERVE = 64


def connection_cap(fd_limit: int) -> int:
    """Client connections a process with ``fd_limit`` descriptors can hold: each may
    need an upstream connection too, and some descriptors are kept back."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit <= 0:
        fd_limit = 1 << 20
    return max(16, (fd_limit - FD_RESERVE) // 2)


class Http1Server:
    """Serve an ASGI ``app`` on ``host:port`` until :meth:`request_exit` (or SIGTERM /
    SIGINT, when ``serve(install_signals=True)``), within ``limits``; without
    ``limits.max_connections``, the cap follows this process's fd soft limit when
    serving begins (``connection_cap``)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        graceful_seconds: float = 30,
        limits: ServerConfig | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.graceful_seconds = graceful_seconds
        limits = limits or ServerConfig()
        # Read on every request: plain attributes, not a model's.
        self.keep_alive = limits.keep_alive_seconds
        self.head_timeout = limits.head_timeout_seconds
        self.body_timeout = limits.body_timeout_seconds
        self.min_body_rate = limits.min_body_bytes_per_second
        self.max_head_bytes = limits.max_head_bytes
        self.max_headers = limits.max_headers
        self.max_connections = limits.max_connections or 0  # set in serve() when 0
        self.connections: set[Connection] = set()
        self.lingering: set[Connection] = set()  # refused, their 503 going out
        self._sweeper: asyncio.TimerHandle | None = None
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
        if not self.max_connections:
            self.max_connections = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        lifespan = _Lifespan(self.app, self.state)
        await lifespan.startup()
        server = await self.loop.create_server(
            lambda: Connection(self), self.host, self.port, reuse_address=True, backlog=2048
        )
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self._exit.set)
        self.started = True
        log.info("serving on http://%s:%d", self.host, self.port)
        self._sweep()
        try:
            await self._exit.wait()
        finally:
            if self._sweeper is not None:
                self._sweeper.cancel()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self.loop.remove_signal_handler(sig)
            await self._shutdown(server)
            await lifespan.shutdown()

    def _sweep(self) -> None:
        """Act on the connections whose deadline passed; runs every ``_period`` s."""
        now = self.loop.time()
        for group in (self.connections, self.lingering):
            expired = [conn for conn in group if conn.deadline <= now]
            for conn in expired:
                conn.expire()
        self._sweeper = self.loop.call_later(self._period, self._sweep)

    @property
    def _period(self) -> float:
        # A deadline is acted on up to a quarter of the shortest limit late, 1 s at most.
        return min(1.0, self.keep_alive / 4, self.head_timeout / 4, self.body_timeout / 4)

    async def _shutdown(self, server: asyncio.AbstractServer) -> None:
        # The listener stays open while requests finish: a new connection gets a 503
        # saying why (connection.py), not a refused connect.
        self.closing = True
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
        server.close()
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


class _Lifespan:
    """Runs the app's ASGI lifespan: startup before serving, shutdown after."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True
        self.answered = False

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.state}
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
