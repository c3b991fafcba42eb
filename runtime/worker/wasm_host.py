"""The WASM host: one process serving every WASM-tier model of a machine (or a pod).

``python -m runtime.worker --host-wasm`` runs it. Models are loaded on request and
routed by name under a per-model prefix, so a replica's URL can point at one model:

- ``POST /admin/models/{name}/load`` with the model's ``ModelSpec`` as JSON: load it
  (or, if resident, only activate it) and answer once it serves:
  ``{"ready": true, "load": {"phases": {...}}}``;
- ``POST /admin/models/{name}/release``: scale it to zero inside the host (no
  instances; compiled code and weights stay until the memory budget needs them);
- ``POST /admin/models/{name}/unload``: free it; ``GET /admin/models``: the table;
- ``/m/{name}/...``: the model's own worker routes (OpenAI, OIP v2, Ollama), the
  prefix taken off;
- ``GET /v2/health/live`` and ``/v2/health/ready``: the host itself (ready once the
  models to preload, ``--preload``, are resident: how a Knative pod of the host
  starts, with no supervisor to load them).

With a token (``Settings.host_token``, from ``EDGEINFER_HOST_TOKEN``), ``/admin/*`` needs
``Authorization: Bearer TOKEN``. Admin bodies are bounded (``MAX_ADMIN_BODY``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from runtime.api.render import error_body
from runtime.errors import (
    BadInput,
    EdgeInferError,
    MethodNotAllowed,
    ModelNotReady,
    PayloadTooLarge,
    RouteNotFound,
    Unauthorized,
    describe_validation,
)
from runtime.settings import Settings
from runtime.spec.model import ModelSpec
from runtime.worker.hosted import HostedModels

__all__ = ["MAX_ADMIN_BODY", "MODEL_PREFIX", "HostApp", "run_host"]

log = logging.getLogger("edgeinfer.wasm_host")

MAX_ADMIN_BODY = 1 << 20
MODEL_PREFIX = "/m/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ADMIN = re.compile(r"^/admin/models/([^/]+)/(load|release|unload)$")


class HostApp:
    """The host's raw ASGI app over a :class:`HostedModels` table."""

    def __init__(
        self,
        models: HostedModels,
        token: str | None = None,
        preload: Sequence[ModelSpec] = (),
    ) -> None:
        self.models = models
        self._token = token.encode() if token else None
        self._preload = list(preload)
        self._preloading: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        try:
            if path.startswith(MODEL_PREFIX):
                await self._model(scope, receive, send, path)
                return
            body = await self._route(scope, receive, path)
        except EdgeInferError as exc:
            await _json(send, exc.status, error_body("/v2", exc))
            return
        await _json(send, 200, body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._preload:
                    self._preloading = asyncio.create_task(self._load_all())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._preloading is not None:
                    self._preloading.cancel()
                await self.models.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load_all(self) -> None:
        """The preloads, one after the other; one that fails is logged and left out
        (its requests are 404s), the others serve."""
        for spec in self._preload:
            try:
                await self.models.preload(spec)
            except EdgeInferError as exc:
                log.error("preloading %s failed: %s", spec.name, exc.message)

    @property
    def ready(self) -> bool:
        """Live at once; ready once the preloads (if any) are done."""
        return self._preloading is None or self._preloading.done()

    async def _route(self, scope: Scope, receive: Receive, path: str) -> dict[str, Any]:
        method = scope["method"]
        if path == "/v2/health/live":
            return {"live": True}
        if path == "/v2/health/ready":
            if not self.ready:
                raise ModelNotReady("the WASM host is still loading its models")
            return {"ready": True}
        if not path.startswith("/admin/"):
            raise RouteNotFound(f"no route {path!r} on the WASM host")
        self._check_token(scope)
        if path == "/admin/models":
            if method != "GET":
                raise MethodNotAllowed(f"{method} {path}: use GET", allow="GET")
            return self.models.describe()
        found = _ADMIN.match(path)
        if found is None:
            raise RouteNotFound(f"no route {path!r} on the WASM host")
        if method != "POST":
            raise MethodNotAllowed(f"{method} {path}: use POST", allow="POST")
        name, action = found.group(1), found.group(2)
        _check_name(name)
        if action == "load":
            spec = _spec(await _read_body(receive, MAX_ADMIN_BODY), name)
            return await self.models.activate(spec)
        await _read_body(receive, MAX_ADMIN_BODY)
        if action == "release":
            return await self.models.release(name)
        return await self.models.unload(name)

    def _check_token(self, scope: Scope) -> None:
        if self._token is None:
            return
        for key, value in scope["headers"]:
            if key == b"authorization" and value.startswith(b"Bearer "):
                if hmac.compare_digest(value[7:], self._token):
                    return
        raise Unauthorized("the WASM host's admin routes need its bearer token")

    async def _model(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        name = path[len(MODEL_PREFIX) :].partition("/")[0]
        _check_name(name)
        model = self.models.get(name)
        # Starlette's convention (as its Mount does): the full path stays, the prefix
        # becomes the root path that routing takes off.
        inner = dict(scope)
        inner["root_path"] = scope.get("root_path", "") + f"{MODEL_PREFIX}{name}"
        model.in_flight += 1
        model.last_used = self.models.clock()
        try:
            await model.app(inner, receive, send)
        finally:
            model.in_flight -= 1
            model.last_used = self.models.clock()


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise BadInput(
            "a model name is 1-128 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _spec(body: bytes, name: str) -> ModelSpec:
    try:
        spec = ModelSpec.model_validate_json(body)
    except ValidationError as exc:
        raise BadInput(f"the body is not a model spec: {describe_validation(exc)}") from None
    if spec.name != name:
        raise BadInput(f"the spec names model {spec.name!r}, the path {name!r}")
    return spec


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadInput("the client went away before its body was read")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"an admin body holds at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def run_host(
    settings: Settings,
    base_dir: Path,
    *,
    host: str,
    port: int,
    budget_bytes: int | None,
    preload: Sequence[ModelSpec] = (),
) -> int:
    """Serve the WASM host until SIGINT/SIGTERM; the process exit code. ``preload``:
    models loaded at start (resident, no instances), as a pod's host does."""
    import uvloop

    from runtime.worker.http_server import http_server

    app = HostApp(
        HostedModels(settings, base_dir, budget_bytes=budget_bytes), settings.host_token, preload
    )
    server = http_server(
        app, host=host, port=port, log_level=settings.log_level, graceful_seconds=30
    )
    uvloop.run(server.serve())
    return 0
