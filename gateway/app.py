"""The gateway: one HTTP front door for every model, as a raw ASGI app.

The proxy path (OpenAI and OIP v2 inference routes) is plain ASGI rather than a
FastAPI route: it only reads the body, finds the model, checks the key and limits,
takes a replica slot from the supervisor and streams the replica's answer back, and
framework request handling measured 1.2-1.7x slower for that here. Errors use the
same renderers as the worker, so a client sees one error shape per API.

Request flow: body (<= max size, else 413) -> model (JSON ``model`` field or OIP path)
-> key (401/403) -> rate limit (429) -> replica slot, waiting while one starts (503
queue full, 504 deadline) -> forward -> release.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auth import Authenticator, KeyIdentity
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.proxy import forward
from gateway.upstream import UpstreamPool
from gateway.usage import UsageTap
from runtime.api.body import json_object
from runtime.api.render import error_response
from runtime.errors import BadInput, EdgeInferError, ModelNotFound, RuntimeFailure
from runtime.manager import Manager
from runtime.replica import ColdStart
from runtime.spec import ModelConfig
from runtime.supervisor import Supervisor

__all__ = ["Gateway"]

log = logging.getLogger("edgeinfer.gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_OPENAI_PROXY = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
}
_OIP_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?(/infer|/ready)?$")
_JSON = [(b"content-type", b"application/json")]


class Gateway:
    """ASGI app. Its lifespan starts and stops the supervisor and the forwarding pool."""

    def __init__(
        self,
        config: ModelConfig,
        settings: GatewayConfig,
        supervisor: Supervisor,
        authenticator: Authenticator,
        clock: Callable[[], float] = time.monotonic,
        manager: Manager | None = None,
    ) -> None:
        self.config = config
        self.manager = manager  # places models and re-plans; fed every request's outcome
        self.settings = settings
        self.supervisor = supervisor
        self.auth = authenticator
        self.limiter = authenticator.rate_limiter()
        self.clock = clock
        self.metrics = GatewayMetrics(supervisor)
        self.upstream = UpstreamPool()
        self.created = int(time.time())
        supervisor.on_cold_start = self._record_cold_start

    def _record_cold_start(self, model: str, cold: ColdStart) -> None:
        for phase, seconds in cold.phases.items():
            self.metrics.cold_start.labels(model, phase).observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await (self.manager or self.supervisor).start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await (self.manager or self.supervisor).stop()
                self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        start = time.perf_counter()
        model, route, status = "", path, 500
        try:
            if path in _OPENAI_PROXY and scope["method"] == "POST":
                body = await self._body(scope, receive)
                request = json_object(body)
                model = _model_field(request)
                tap = UsageTap()
                if request.get("stream") is True:
                    options = request.get("stream_options") or {}
                    if not (isinstance(options, dict) and options.get("include_usage")):
                        # Ask for the usage event, count it, and hide it again.
                        tap = UsageTap(strip_usage_event=True)
                        request["stream_options"] = {**options, "include_usage": True}
                        body = json.dumps(request).encode()
                status = await self._proxy(scope, receive, send, model, body, tap)
            elif (m := _OIP_MODEL.match(path)) is not None:
                model, suffix = m.group(1), m.group(2)
                route = "/v2/models/{name}" + (suffix or "")
                if suffix == "/ready":
                    status = await self._model_ready(scope, send, model)
                else:
                    body = await self._body(scope, receive)
                    status = await self._proxy(scope, receive, send, model, body)
            else:
                model, route = "-", _route_label(path)
                status = await self._local(scope, send, path)
        except EdgeInferError as exc:
            status = exc.status
            if isinstance(exc, ModelNotFound):
                # Names and paths a client made up never become metric labels.
                model = "-" if isinstance(exc, _NotFound) else "(unknown)"
                route = _route_label(path)
            await error_response(path, exc)(scope, receive, send)
        except Exception as exc:  # a bug here must still answer in the API's shape
            log.exception("unhandled error on %s", path)
            status = 500
            failure = RuntimeFailure(f"internal error in the gateway: {exc!r}")
            await error_response(path, failure)(scope, receive, send)
        finally:
            if model:
                seconds = time.perf_counter() - start
                self.metrics.observe_request(model, route, status, seconds)
                if self.manager is not None:
                    self.manager.observe(model, status, seconds)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        self.auth.check_body_size(int(declared) if declared and declared.isdigit() else None, 0)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadInput("the client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            self.auth.check_body_size(None, size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _identity(self, scope: Scope, model: str) -> KeyIdentity:
        identity = self.auth.authenticate(_header(scope, b"authorization"))
        self.auth.authorize(identity, model)
        self.limiter.check(identity.name, self.clock())
        return identity

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: str,
        body: bytes,
        tap: UsageTap | None = None,
    ) -> int:
        self._identity(scope, model)
        pool = self.supervisor.pool(model)
        timeout = self._deadline(scope, pool.spec.scaling.timeout)
        deadline = self.clock() + timeout
        replica = pool.try_acquire() or await pool.acquire(deadline)
        try:
            target = scope["path"]
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            host, port = replica.address
            started = time.perf_counter()
            result = await forward(
                self.upstream,
                host,
                port,
                target,
                scope["method"],
                scope["headers"],
                body,
                send,
                receive,
                seconds_left=max(0.001, deadline - self.clock()),
                tap=tap,
            )
        finally:
            pool.release(replica)
        if tap is not None:
            self.metrics.tokens.labels(model, "prompt").inc(tap.prompt)
            self.metrics.tokens.labels(model, "completion").inc(tap.completion)
        if result.first_byte is not None and result.chunks > 2:
            # Streams: the first event and the mean gap between events.
            self.metrics.ttft.labels(model).observe(result.first_byte - started)
            if result.last_byte is not None:
                gap = (result.last_byte - result.first_byte) / (result.chunks - 1)
                self.metrics.tpot.labels(model).observe(gap)
        return result.status

    def _deadline(self, scope: Scope, default: float) -> float:
        raw = _header(scope, self.settings.timeout_header.encode())
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise BadInput(f"{self.settings.timeout_header} must be seconds, got {raw!r}") from None
        if value <= 0:
            raise BadInput(f"{self.settings.timeout_header} must be > 0, got {raw!r}")
        return min(value, default)

    async def _model_ready(self, scope: Scope, send: Send, model: str) -> int:
        self._identity(scope, model)
        self.supervisor.pool(model)  # 404 for an unknown model
        # A model scaled to zero is ready: the first request starts a replica.
        return await _send_json(send, 200, {"name": model, "ready": True})

    async def _local(self, scope: Scope, send: Send, path: str) -> int:
        method = scope["method"]
        if path == "/v2/health/live" and method == "GET":
            return await _send_json(send, 200, {"live": True})
        if path == "/v2/health/ready" and method == "GET":
            return await _send_json(send, 200, {"ready": True})
        if path == "/v1/models" and method == "GET":
            identity = self.auth.authenticate(_header(scope, b"authorization"))
            names = [
                m.name
                for m in self.config.models
                if identity.models is None or m.name in identity.models
            ]
            data = [
                {"id": n, "object": "model", "created": self.created, "owned_by": "edgeinfer"}
                for n in names
            ]
            return await _send_json(send, 200, {"object": "list", "data": data})
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            self._identity(scope, name)
            self.supervisor.pool(name)
            return await _send_json(
                send,
                200,
                {"id": name, "object": "model", "created": self.created, "owned_by": "edgeinfer"},
            )
        if path == "/metrics" and method == "GET":
            self.auth.authenticate_admin(_header(scope, b"authorization"))
            payload = generate_latest(self.metrics.registry)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return 200
        if path == "/admin/models" and method == "GET":
            self.auth.authenticate_admin(_header(scope, b"authorization"))
            return await _send_json(send, 200, {"models": self._admin_models()})
        raise _NotFound(f"{method} {path}: no such route")

    def _admin_models(self) -> list[dict[str, Any]]:
        out = []
        for spec in self.config.models:
            s = self.supervisor.pool(spec.name).status()
            cold = s.last_cold_start
            placed = self.manager.describe(spec.name) if self.manager else None
            out.append(
                {
                    "model": spec.name,
                    "task": spec.task.value,
                    "runtime": placed["tiers"][0]["tier"]
                    if placed
                    else (spec.runtimes[0].value if spec.runtimes else "external"),
                    "runtime_reason": placed["reason"]
                    if placed
                    else (
                        f"served by {spec.endpoint}"
                        if spec.endpoint
                        else "the first runtime the model lists (no manager runs here)"
                    ),
                    "placement": placed,
                    "bridge_served": s.bridge_served,
                    "moves": s.moves,
                    "replicas": {
                        "ready": s.ready,
                        "starting": s.starting,
                        "draining": s.draining,
                        "desired": s.desired,
                    },
                    "autoscaler": {"panic": s.panic, "reason": s.reason},
                    "instances": [
                        {
                            "url": r.url,
                            "pid": r.process.pid,
                            "state": r.state.value,
                            "in_flight": r.in_flight,
                            "served": r.served,
                            "tier": r.tier.key if r.tier else None,
                            "role": r.tier.role.value if r.tier else None,
                        }
                        for r in self.supervisor.pool(spec.name).replicas
                    ],
                    "in_flight": s.in_flight,
                    "queue_depth": s.queued,
                    "cold_starts": s.cold_starts,
                    "last_cold_start": None
                    if cold is None
                    else {
                        "total_seconds": round(cold.total, 4),
                        "phases": {k: round(v, 4) for k, v in cold.phases.items()},
                    },
                }
            )
        return out


class _NotFound(ModelNotFound):
    code = "not_found"


_LOCAL_ROUTES = frozenset(
    {"/v2/health/live", "/v2/health/ready", "/v1/models", "/metrics", "/admin/models"}
)


def _route_label(path: str) -> str:
    """The route as a metric label: a fixed name, never a path a client made up."""
    if path in _OPENAI_PROXY or path in _LOCAL_ROUTES:
        return path
    if (m := _OIP_MODEL.match(path)) is not None:
        return "/v2/models/{name}" + (m.group(2) or "")
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}"
    return "(unmatched)"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _model_field(request: dict[str, Any]) -> str:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadInput("field 'model': Field required (the name of the model to use)")
    return model


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> int:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": payload})
    return status
