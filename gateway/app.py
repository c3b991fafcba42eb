"""The gateway: one HTTP front door for every model, as a raw ASGI app.

The proxy path (OpenAI and OIP v2 inference routes) is plain ASGI rather than a
FastAPI route: it only reads the body, finds the model, checks the key and limits,
takes a replica slot from the supervisor and streams the replica's answer back, and
framework request handling measured 1.2-1.7x slower for that here. Errors use the
same renderers as the worker, so a client sees one error shape per API.

Request flow: target check (400 for control characters or spaces, raw or
percent-encoded) -> method (405) -> key from the head (401; 429 for an address with
too many failed keys) -> OIP: model from the path, scope (403) and rate (429), all
before the body is read -> body (<= max size, else 413) -> OpenAI: model from the
JSON body, then scope and rate -> replica slot, waiting while one starts (503 queue
full, 504 deadline) -> forward the raw, still-encoded target -> release.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from gateway import dashboard, ollama
from gateway.accounting import parse_since
from gateway.aliases import Router, body_rewrite, path_rewrite
from gateway.auth import Authenticator, KeyIdentity
from gateway.config import GatewayConfig
from gateway.metrics import NO_MODEL, GatewayMetrics
from gateway.observe import Observer, RequestRecord
from gateway.openapi import gateway_document
from gateway.proxy import ForwardResult, forward, upstream_headers
from gateway.quotas import QuotaCharge
from gateway.retry import send_with_retry
from gateway.shedding import ShedAnswers
from gateway.shedding import check as shed_check
from gateway.traffic import ticket as request_ticket
from gateway.upstream import UpstreamPool
from gateway.usage import UsageTap
from runtime.api import openai
from runtime.api.body import json_object
from runtime.api.ollama import keep_alive_seconds
from runtime.api.render import error_response
from runtime.errors import (
    BadInput,
    EdgeInferError,
    MethodNotAllowed,
    ModelNotFound,
    ResponseCut,
    RouteNotFound,
    RuntimeFailure,
    Shed,
    ShuttingDown,
    Unauthorized,
    UnsupportedTask,
)
from runtime.placement.manager import Manager
from runtime.scaling.queue import STANDARD, Ticket
from runtime.scaling.replica import ColdStart, Replica
from runtime.scaling.source import ReplicaSource
from runtime.spec.model import MODEL_NAME, ROUTE_TASKS, ModelConfig
from runtime.spec.traffic import Priority

__all__ = ["Gateway"]

log = logging.getLogger("edgeinfer.gateway")


_OPENAI_PROXY = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
}
_USAGE_ON_REQUEST = frozenset({"/v1/chat/completions", "/v1/completions"})
# Only what a model name (runtime.spec) and a version may hold: nothing a request line
# could be split on reaches the path a replica sees.
_VERSION = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?"
_OIP_MODEL = re.compile(rf"^/v2/models/({MODEL_NAME})(?:/versions/{_VERSION})?(/infer|/ready)?$")
# Bytes that never belong in a request target (controls, space, DEL, non-ASCII), also
# percent-encoded: a decoded CR/LF written upstream would split the request in two.
_UNSAFE_TARGET = re.compile(rb"[^\x21-\x7e]|%(?:[01][0-9A-Fa-f]|20|7[Ff])")
_JSON = [(b"content-type", b"application/json")]
# nginx's status for a client that closed its connection before the answer was whole
CLIENT_CLOSED = 499


class Gateway:
    """ASGI app. Its lifespan starts and stops the supervisor and the forwarding pool."""

    def __init__(
        self,
        config: ModelConfig,
        settings: GatewayConfig,
        supervisor: ReplicaSource,
        authenticator: Authenticator,
        clock: Callable[[], float] = time.monotonic,
        manager: Manager | None = None,
        rng: random.Random | None = None,
        tracer_provider: Any | None = None,
    ) -> None:
        self.config = config
        self.manager = manager  # places models and re-plans; fed every request's outcome
        self.settings = settings
        self.supervisor = supervisor
        self.auth = authenticator
        self.limiter = authenticator.rate_limiter()
        self.failures = authenticator.failure_limiter()
        self.quotas = authenticator.quota_book()
        self.clock = clock
        names = [*(m.name for m in config.models), *(a.name for a in config.aliases)]
        self.metrics = GatewayMetrics(supervisor, names)
        self.aliases = Router(config.aliases, self.metrics.registry, rng or random.Random())
        self.upstream = UpstreamPool()
        self.created = int(time.time())
        supervisor.on_cold_start = self._record_cold_start
        # Traces (off without a provider), usage per key, access log, dashboard history.
        self.tracer_provider = tracer_provider
        self.obs = Observer(
            self.metrics.registry,
            (identity.name for identity, _ in authenticator.keys),
            supervisor,
            tracer=tracer_provider.get_tracer("edgeinfer.gateway") if tracer_provider else None,
            clock=clock,
        )
        self._sampling: asyncio.Task[None] | None = None
        # Per request: header names as bytes once, and each key's ticket when its
        # request names no class or tenant (the usual case) built once.
        self._priority_header = settings.traffic.priority_header.encode()
        self._fairness_header = settings.traffic.fairness_header.encode()
        self._timeout_header = settings.timeout_header.encode()
        self._tickets: dict[str, Ticket] = {}
        self.shed_answers = ShedAnswers()

    def _record_cold_start(self, model: str, cold: ColdStart) -> None:
        for phase, seconds in cold.phases.items():
            self.metrics.cold_start.labels(model, phase).observe(seconds)
        self.obs.history.cold_start(model, cold)

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
                self._sampling = asyncio.create_task(self.obs.history.run())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sampling is not None:
                    self._sampling.cancel()
                await (self.manager or self.supervisor).stop()
                await self.aliases.close()
                self.upstream.close()
                if self.tracer_provider is not None:
                    self.tracer_provider.shutdown()  # exports what its batch holds
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        model, status, shed = "", 500, False
        route: str | None = None  # the route's metric label, once known
        record = scope["edgeinfer.request"] = self.obs.begin(scope)
        # Answers the gateway writes itself get x-request-id from a wrapper made when
        # one is written (``answer``); a forwarded one gets it from the proxy.
        answer = partial(Observer.send_with_id, record)
        try:
            target = _target(scope)
            method = scope["method"]
            if path in _OPENAI_PROXY:
                route = path
                if method != "POST":
                    raise MethodNotAllowed(f"{method} {path}: this route takes POST", allow="POST")
                identity = self._authenticate(scope)  # from the head: before the body
                body = await self._body(scope, receive)
                request = json_object(body, unique_keys=("model",))
                model = ollama.proxied_model(path, _model_field(request))
                self._admit(identity, model)
                ticket = self._ticket(scope, identity)
                self._shed_early(model, ticket)
                if path in ollama.OLLAMA_PROXY and "keep_alive" in request:
                    self._keep_alive(model, request.pop("keep_alive"))
                    body = json.dumps(request).encode()  # the worker has no pool to hold
                tap = UsageTap()
                # Only OpenAI's chat and completions streams hide their usage unless
                # asked; /v1/responses and Ollama's answers always carry theirs.
                if request.get("stream") is True and path in _USAGE_ON_REQUEST:
                    options = request.get("stream_options")
                    if options is not None and not isinstance(options, dict):
                        raise BadInput(
                            "field 'stream_options': must be an object such as "
                            '{"include_usage": true}, or left out'
                        )
                    if not (options and options.get("include_usage")):
                        # Ask for the usage event, count it, and hide it again.
                        tap = UsageTap(strip_usage_event=True)
                        request["stream_options"] = {**(options or {}), "include_usage": True}
                        body = json.dumps(request).encode()
                status, model = await self._send_to(
                    scope,
                    receive,
                    send,
                    (target, model, body, tap, ticket, identity.name),
                    lambda: body_rewrite(target, request),
                    stream=request.get("stream") is True,
                )
            elif (m := _OIP_MODEL.match(path)) is not None:
                model, suffix = m.group(1), m.group(2)
                route = "/v2/models/{name}" + (suffix or "")
                if suffix == "/ready":
                    if method not in ("GET", "HEAD"):
                        raise MethodNotAllowed(
                            f"{method} {path}: this route takes GET", allow="GET, HEAD"
                        )
                    status = await self._model_ready(scope, answer(send), model)
                else:
                    # Never proxied with another method: a HEAD's answer has no body
                    # to wait for, and the replica would only refuse it anyway.
                    allow = "POST" if suffix == "/infer" else "GET"
                    if method != allow:
                        raise MethodNotAllowed(
                            f"{method} {path}: this route takes {allow}", allow=allow
                        )
                    identity = self._authenticate(scope)
                    self._admit(identity, model)  # all before the body
                    ticket = self._ticket(scope, identity)
                    self._shed_early(model, ticket)
                    body = await self._body(scope, receive) if allow == "POST" else b""
                    status, model = await self._send_to(
                        scope,
                        receive,
                        send,
                        (target, model, body, None, ticket, identity.name),
                        partial(path_rewrite, target, model, suffix, body),
                    )
            elif path == ollama.SHOW or path in ollama.LISTINGS:
                model, route = "-", path
                status = await self._ollama(scope, receive, answer(send), path)
            else:
                model, route = "-", _route_label(path)
                status = await self._local(scope, answer(send), path)
        except asyncio.CancelledError:
            status = ShuttingDown.status  # the server's grace period ended: counted so
            raise
        except ResponseCut as exc:
            # The status line is out: the server must abort the connection, so the
            # client sees the answer cut, never complete (a raise is how ASGI says it).
            status = exc.status
            log.warning("%s: %s", path, exc.message)
            raise
        except Shed as exc:
            # A flood of sheddable requests at a saturated model: each refusal is a
            # pre-built answer and a counter, so refusing stays cheap (issue 18).
            status, shed = exc.status, True
            await self.shed_answers.send(path, exc, record.response_header(), send)
        except EdgeInferError as exc:
            status = exc.status
            if isinstance(exc, ModelNotFound):
                # Names and paths a client made up never become metric labels.
                model = "-" if isinstance(exc, RouteNotFound) else "(unknown)"
                route = _route_label(path)
            await error_response(path, exc)(scope, receive, answer(send))
        except Exception as exc:  # a bug here must still answer in the API's shape
            log.exception("unhandled error on %s", path)
            status = 500
            failure = RuntimeFailure(f"internal error in the gateway: {exc!r}")
            await error_response(path, failure)(scope, receive, answer(send))
        finally:
            if route is None:
                route = _route_label(path)
            if shed:
                self.metrics.count(model, route, status)
                self.obs.shed(record)
            else:
                record.status, record.route = status, route
                label = self.metrics.model_label(model) if model else NO_MODEL
                seconds = self.obs.finish(record, label)
                if model:
                    self.metrics.observe_request(model, route, status, seconds)
                    if self.manager is not None and model in self.metrics.models:
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

    def _authenticate(self, scope: Scope, *, admin: bool = False) -> KeyIdentity:
        """The key in the head: 401 when missing or unknown, and 429 instead once the
        client's address has sent too many of those lately. A valid key always passes:
        clients behind one address (a NAT) are not locked out by a guesser among them,
        and the keys are too long for the answer to a guess to matter."""
        header = _header(scope, b"authorization")
        try:
            identity = (
                self.auth.authenticate_admin(header) if admin else self.auth.authenticate(header)
            )
            if (record := scope.get("edgeinfer.request")) is not None:
                record.key = identity.name
            return identity
        except Unauthorized:
            client = scope.get("client")
            address = client[0] if client else "-"
            now = self.clock()
            self.failures.check(address, now)
            self.failures.failed(address, now)
            raise

    def _keep_alive(self, model: str, value: object) -> None:
        """Ollama's ``keep_alive``: hold the model's pool at one replica or more for that
        long, at most ``max_keep_alive_seconds``. 0 (unload now) is refused: a model
        goes to zero by its scaling rule's idle window, not on request."""
        seconds = keep_alive_seconds(value)
        limit = self.settings.max_keep_alive_seconds
        if seconds == 0 or limit == 0:
            raise BadInput(
                "field 'keep_alive': "
                + ("0 (unload now) is not supported: " if seconds == 0 else "is disabled here: ")
                + "a model goes to zero after its scaling rule's idle window; leave it out"
            )
        for name in self.aliases.models(model) or [model]:  # an alias: each of its models
            self.supervisor.pool(name).hold(self.clock() + min(seconds, limit))

    def _admit(self, identity: KeyIdentity, model: str) -> None:
        """The key's model scope (403) and its rate (429)."""
        self.auth.authorize(identity, model)
        self.limiter.check(identity.name, self.clock())

    def _shed_early(self, model: str, ticket: Ticket) -> None:
        """A sheddable request at a saturated model: refused here, before the body (OIP)
        or any forwarding work (gateway.shedding); an alias's pool decides later."""
        if ticket.priority is Priority.SHEDDABLE and model not in self.aliases.aliases:
            shed_check(self.supervisor.pool(model), ticket)

    def _ticket(self, scope: Scope, identity: KeyIdentity) -> Ticket:
        """The key's token quotas (429), then the class and tenant it queues as."""
        if identity.name in self.quotas.quotas:
            self.quotas.check(identity.name, self.clock())
        priority = fairness = None
        for name, value in scope["headers"]:
            if name == self._priority_header and priority is None:
                priority = value.decode("latin-1")
            elif name == self._fairness_header and fairness is None:
                fairness = value.decode("latin-1")
        if priority is None and fairness is None:
            ticket = self._tickets.get(identity.name)
            if ticket is None:
                ticket = request_ticket(identity, self.settings.traffic, None, None)
                self._tickets[identity.name] = ticket  # bounded: configured keys only
            return ticket
        return request_ticket(identity, self.settings.traffic, priority, fairness)

    async def _send_to(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: tuple[str, str, bytes, UsageTap | None, Ticket, str],
        rewrite: Callable[[], Any],
        *,
        stream: bool = False,
    ) -> tuple[int, str]:
        """The request (target, model, body, tap, ticket, key name) to its model, or
        through the alias's plan when the name is an alias (``rewrite()`` makes the
        request for each of its models); the status and the model that answered."""
        target, model, body, tap, ticket, key = request
        plan = self.aliases.plan(model)
        if plan is None:
            status = await self._proxy(scope, receive, send, target, model, body, tap, ticket, key)
            return status, model
        proxy = partial(self._proxy, scope)
        return await self.aliases.serve(
            plan, proxy, receive, send, rewrite(), tap, ticket, key, stream=stream
        )

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: str,
        model: str,
        body: bytes,
        tap: UsageTap | None = None,
        ticket: Ticket = STANDARD,
        key: str = "",
    ) -> int:
        pool = self.supervisor.pool(model)
        tasks = ROUTE_TASKS.get(scope["path"])
        if tasks is not None and pool.spec.task not in tasks:
            raise UnsupportedTask(
                f"model {model!r} is a {pool.spec.task} model; {scope['path']} serves "
                + " and ".join(sorted(tasks))
                + " models"
            )
        timeout = self._deadline(scope, pool.spec.scaling.timeout)
        record: RequestRecord = scope["edgeinfer.request"]
        deadline = self.clock() + timeout
        headers = (
            upstream_headers(scope["headers"], scope.get("client"), scope.get("scheme", "http"))
            + record.replica_headers()
        )
        charge = None
        if tap is not None and key in self.quotas.quotas:
            charge = QuotaCharge(self.quotas, key, tap, self.clock, send)
            send = charge.send
        response_headers = [record.response_header()]
        started = time.perf_counter()

        def acquired(replica: Replica, asked_at: float, waited: bool) -> None:
            self.obs.acquired(record, replica, asked_at, waited)

        async def send_to(replica: Replica) -> ForwardResult:
            host, port = replica.address
            return await forward(
                self.upstream,
                host,
                port,
                replica.path + target,  # "" but for a model inside a multi-model host
                scope["method"],
                headers,
                body,
                send,
                receive,
                seconds_left=max(0.001, deadline - self.clock()),
                tap=tap,
                progress=replica.progressed,
                response_headers=response_headers,
            )

        try:
            result = await send_with_retry(
                pool,
                deadline,
                self.clock,
                send_to,
                ticket=ticket,
                acquired=acquired,
                request_id=record.request_id,
            )
        finally:
            if charge is not None:
                charge.close()
        if result.streaming and result.first_byte is not None:
            record.ttft = result.first_byte - started
        if tap is not None:
            record.input_tokens, record.output_tokens = tap.prompt, tap.completion
            self.metrics.tokens.labels(model, "prompt").inc(tap.prompt)
            self.metrics.tokens.labels(model, "completion").inc(tap.completion)
        if result.first_byte is not None and result.chunks > 2:
            # Streams: the first event and the mean gap between events.
            self.metrics.ttft.labels(model).observe(result.first_byte - started)
            if result.last_byte is not None:
                gap = (result.last_byte - result.first_byte) / (result.chunks - 1)
                self.metrics.tpot.labels(model).observe(gap)
        return CLIENT_CLOSED if result.disconnected else result.status

    def _deadline(self, scope: Scope, default: float) -> float:
        raw = _header(scope, self._timeout_header)
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
        self._admit(self._authenticate(scope), model)
        self.aliases.models(model) or self.supervisor.pool(model)  # 404 for an unknown one
        # A model scaled to zero is ready: the first request starts a replica.
        return await _send_json(send, 200, {"name": model, "ready": True})

    async def _ollama(self, scope: Scope, receive: Receive, send: Send, path: str) -> int:
        """Ollama's discovery routes, behind the same key as ``/v1/models``."""
        method, allow = scope["method"], "POST" if path == ollama.SHOW else "GET"
        if method != allow:
            raise MethodNotAllowed(f"{method} {path}: this route takes {allow}", allow=allow)
        identity = self._authenticate(scope)  # from the head: before the body
        if path != ollama.SHOW:
            answer = ollama.listing(path, self.config, self.supervisor, identity)
            return await _send_json(send, 200, answer)
        name = ollama.show_target(await self._body(scope, receive))
        self._admit(identity, name)
        return await _send_json(send, 200, ollama.show(self.config, name))

    async def _local(self, scope: Scope, send: Send, path: str) -> int:
        method = scope["method"]
        if path == "/v2/health/live" and method == "GET":
            return await _send_json(send, 200, {"live": True})
        if path == "/v2/health/ready" and method == "GET":
            return await _send_json(send, 200, {"ready": True})
        if path == "/openapi.json" and method == "GET":
            return await _send_json(send, 200, gateway_document(self.config, bool(self.auth.keys)))
        if path == "/v1/models" and method == "GET":
            identity = self._authenticate(scope)
            names = [m.name for m in ollama.usable(self.config, identity)]
            scope_ = identity.models
            names += [a for a in self.aliases.aliases if scope_ is None or a in scope_]
            return await _send_json(send, 200, openai.models_response(names, self.created))
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            self._admit(self._authenticate(scope), name)
            self.aliases.models(name) or self.supervisor.pool(name)
            return await _send_json(send, 200, openai.model_object(name, self.created))
        if path == "/metrics" and method == "GET":
            self._authenticate(scope, admin=True)
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
            self._authenticate(scope, admin=True)
            return await _send_json(send, 200, {"models": self._admin_models()})
        if path.startswith("/admin/") and method == "GET":
            return await self._dashboard(scope, send, path)
        raise RouteNotFound(f"{method} {path}: no such route")

    async def _dashboard(self, scope: Scope, send: Send, path: str) -> int:
        """The dashboard's page and files (no data in them), its state, and usage."""
        if path in ("/admin/usage", "/admin/state"):
            self._authenticate(scope, admin=True)
            now = time.time()
            if path == "/admin/usage":
                since = parse_since(scope.get("query_string", b""), now)
                return await _send_json(send, 200, self.obs.ledger.summary(since))
            usage = self.obs.ledger.summary(now - 3600)
            answer = dashboard.state(self._admin_models(), self.obs.history, usage, now)
            return await _send_json(send, 200, answer)
        found = (
            dashboard.page(self.auth.admin_digest is not None or bool(self.auth.keys))
            if path == "/admin/"
            else dashboard.static_file(path)
        )
        if found is None:
            raise RouteNotFound(f"GET {path}: no such route")
        body, headers = found
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return 200

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
                    "autoscaler": {"panic": s.panic, "reason": s.reason, "cores": s.cores},
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
                    "health": {
                        "unhealthy": s.unhealthy,
                        "failed_starts": s.failed_starts,
                        "backoff_seconds": s.backoff_seconds,
                        "last_error": s.last_error,
                    },
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


_LOCAL_ROUTES = frozenset(
    {
        "/v2/health/live",
        "/v2/health/ready",
        "/v1/models",
        "/metrics",
        "/admin/models",
        "/admin/usage",
        "/admin/state",
        "/admin/",
        "/openapi.json",
        ollama.SHOW,
        *ollama.LISTINGS,
    }
)


def _route_label(path: str) -> str:
    """The route as a metric label: a fixed name, never a path a client made up."""
    if path in _OPENAI_PROXY or path in _LOCAL_ROUTES:
        return path
    if (m := _OIP_MODEL.match(path)) is not None:
        return "/v2/models/{name}" + (m.group(2) or "")
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}"
    if path.startswith(dashboard.STATIC_PREFIX):
        return dashboard.STATIC_PREFIX + "{file}"
    return "(unmatched)"


def _target(scope: Scope) -> str:
    """The request target as the client sent it, still percent-encoded: what goes to a
    replica, so it parses the path exactly as the gateway's server did. 400 for a
    control character or a space in it, raw or percent-encoded (query included)."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:  # a server without raw_path (optional in ASGI): encode it again
        raw = quote(scope["path"]).encode("ascii")
    query: bytes = scope.get("query_string", b"")
    if _UNSAFE_TARGET.search(raw) or (query and _UNSAFE_TARGET.search(query)):
        raise BadInput(
            "the request target holds a control character, a space or a non-ASCII byte "
            "(raw or percent-encoded): send a plain path"
        )
    target = raw.decode("ascii")
    return f"{target}?{query.decode('ascii')}" if query else target


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
