"""The single-model worker: one model, one runtime, DESIGN.md's HTTP contract.

This is what runs in every Knative container and every local replica the gateway
starts. It is live as soon as it listens and ready once the model has loaded;
``create_app`` has no side effects until the app's lifespan starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from opentelemetry.trace import Tracer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from runtime.api import openapi
from runtime.api.render import install_error_handlers, json_response
from runtime.backends.registry import Runtime
from runtime.spec.model import ModelSpec
from runtime.worker import oip_routes, ollama_routes, openai_routes, responses_routes
from runtime.worker.metrics import RequestMetrics
from runtime.worker.state import WorkerState
from runtime.worker.tracing import TracingMiddleware

__all__ = ["create_app"]


def create_app(
    spec: ModelSpec,
    runtime: Runtime,
    *,
    tracer: Tracer | None = None,
    capture_prompts: bool = False,
) -> FastAPI:
    """The worker's ASGI app. The model loads in the background when the app starts;
    the runtime is unloaded (memory freed) when it stops. With a ``tracer``, each
    inference request gets a replica span and an inference span (runtime.worker.tracing)."""
    state = WorkerState(spec, runtime)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load())
        # Starlette streams through an anyio task group; anyio imports its asyncio
        # backend on first use. Do it now rather than inside the first request.
        async with anyio.create_task_group():
            pass
        try:
            yield
        finally:
            await loading
            await runtime.unload()

    app = FastAPI(
        title=f"edgeinfer worker: {spec.name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.worker = state
    install_error_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(oip_routes.router)

    # Our own document rather than FastAPI's: the routes read their bodies themselves,
    # so FastAPI would describe none of the request bodies.
    described = openapi.document(
        f"edgeinfer worker: {spec.name}",
        [spec.name],
        [
            *openapi.openai_operations(secured=False),
            *openapi.oip_operations(secured=False),
            openapi.Operation("get", "/v2", "Server metadata"),
            openapi.Operation("get", "/metrics", "Prometheus metrics", media_type="text/plain"),
        ],
    )

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        return json_response(described)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestMetrics, metrics=state.metrics)
    if tracer is not None:
        app.add_middleware(
            TracingMiddleware,
            tracer=tracer,
            model=spec.name,
            runtime=runtime.name.value,
            device=runtime.device.value,
            capture_prompts=capture_prompts,
        )
    return app
