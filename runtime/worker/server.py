"""Running a worker process: config -> runtime -> app -> uvicorn (uvloop, httptools)."""

from __future__ import annotations

import asyncio
import logging

import uvloop
from opentelemetry import trace

from runtime.backends.registry import create_runtime
from runtime.errors import ModelNotFound
from runtime.settings import Settings
from runtime.spec.model import ModelConfig
from runtime.worker.app import create_app
from runtime.worker.http_server import http_server
from runtime.worker.tracing import tracer_provider

__all__ = ["run_worker"]

log = logging.getLogger("edgeinfer.worker")


def run_worker(
    config: ModelConfig,
    model: str,
    *,
    runtime: str = "auto",
    device: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: Settings,
) -> int:
    """Serve one model until SIGINT/SIGTERM. Returns the process exit code: 0 after a
    clean shutdown, 1 when the model failed to load (so a supervisor or Kubernetes
    sees the failure instead of a worker that is live but never ready)."""
    spec = config.get(model)
    if spec is None:
        names = ", ".join(m.name for m in config.models)
        raise ModelNotFound(f"model {model!r} is not in {config.source}; it has: {names}")
    rt = create_runtime(
        spec, runtime=runtime, device=device, settings=settings, base_dir=config.base_dir
    )
    provider = tracer_provider(config.telemetry, settings.otel, "edgeinfer-worker")
    if provider is not None:
        trace.set_tracer_provider(provider)  # the WASM host's guest-call spans use it
    app = create_app(
        spec,
        rt,
        tracer=None if provider is None else provider.get_tracer("edgeinfer.worker"),
        capture_prompts=config.telemetry.capture_prompts,
    )
    server = http_server(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        graceful_seconds=spec.scaling.timeout,
    )
    state = app.state.worker

    async def main() -> None:
        async def exit_if_load_fails() -> None:
            await state.loaded()
            if state.load_error is not None:
                server.should_exit = True

        watcher = asyncio.create_task(exit_if_load_fails())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    try:
        uvloop.run(main())
    finally:
        if provider is not None:
            provider.shutdown()  # exports the spans still in its batch
    log.debug("worker for %s stopped", spec.name)
    return 1 if state.load_error is not None else 0
