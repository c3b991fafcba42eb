"""What the gateway's per-request observability costs (issue 17), in-process.

One side: the request record alone (``Observer.begin`` → the ``x-request-id`` send
wrapper → ``finish``: usage ledger, dashboard history), then with the JSON access-log
line written, then with a span as well (the SDK with a no-op exporter). The other side,
in the same run: the whole gateway handling ``GET /v1/models`` (an answer the gateway
makes itself, observability included) through its ASGI entry. No sockets on either
side. Prints one JSON line. Run: ``python bench/observe_overhead.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from prometheus_client import CollectorRegistry  # noqa: E402

from gateway.access_log import log as access_log  # noqa: E402
from gateway.observe import Observer  # noqa: E402
from gateway.server import build_gateway  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.model import load_config  # noqa: E402

SCOPE: dict[str, Any] = {
    "type": "http",
    "http_version": "1.1",
    "method": "POST",
    "path": "/v1/embeddings",
    "raw_path": b"/v1/embeddings",
    "query_string": b"",
    "headers": [(b"host", b"x"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 5000),
}


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _record(observer: Observer, n: int) -> float:
    async def send(message: Any) -> None:
        pass

    start = time.perf_counter()
    for _ in range(n):
        record = observer.begin(SCOPE)
        sender = Observer.send_with_id(record, send)
        await sender({"type": "http.response.start", "status": 200, "headers": []})
        await sender({"type": "http.response.body", "body": b"{}"})
        record.key, record.status, record.route = "web", 200, "/v1/embeddings"
        observer.finish(record, "minilm")
    return (time.perf_counter() - start) / n * 1e6


async def _gateway(app: Any, n: int) -> float:
    scope = {**SCOPE, "method": "GET", "path": "/v1/models", "raw_path": b"/v1/models"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    start = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / n * 1e6


async def main(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app = build_gateway(load_config(None), Settings(state_dir=Path(tmp)), environ={})
        supervisor = app.supervisor
        plain = app.obs  # the gateway's own (no tracer: telemetry is off by default)
        await _record(plain, 1000)  # warm the label caches
        out = {"record_us": await _record(plain, n)}
        access_log.addHandler(logging.StreamHandler(io.StringIO()))
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        out["record_and_access_log_us"] = await _record(plain, n)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_Drop()))
        traced = Observer(
            CollectorRegistry(),
            ["web"],
            supervisor,
            tracer=provider.get_tracer("bench"),
            clock=time.monotonic,
        )
        out["record_access_log_and_span_us"] = await _record(traced, n)
        await _gateway(app, 1000)
        out["gateway_get_v1_models_us"] = await _gateway(app, n)
        out["share_of_a_local_request"] = round(
            out["record_and_access_log_us"] / out["gateway_get_v1_models_us"], 3
        )
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    print(json.dumps({"bench": "observe_overhead", "n": args.n, **asyncio.run(main(args.n))}))
