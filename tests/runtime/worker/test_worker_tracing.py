"""The worker's spans, from a real worker process serving a WASM engine package
(Magika on our engine, ``compute`` ABI), exported over OTLP/HTTP to a real receiver on
loopback. Telemetry is switched on by the standard environment alone
(``OTEL_EXPORTER_OTLP_ENDPOINT``), as an operator would."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.spec.telemetry import TelemetryConfig
from runtime.worker.tracing import (
    TracingMiddleware,
    parse_traceparent,
    traceparent,
    valid_request_id,
)
from tests.conftest import WorkerProcess, start_worker
from tests.gateway.otlp_receiver import OtlpReceiver

MODELS = Path(__file__).resolve().parents[3] / "wasm-modules" / "packages" / "models.yaml"
TRACE = "6cf92f3577b34da6a3ce929d0e0e4736"
PARENT = "20f067aa0ba902b7"


@pytest.mark.parametrize(
    ("section", "env", "on"),
    [
        ({}, {}, False),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, True),
        ({}, {"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({}, {"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"enabled": True}, {}, True),
        ({"enabled": False}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"enabled": True}, {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_telemetry_is_off_unless_asked(
    section: dict[str, bool], env: dict[str, str], on: bool
) -> None:
    assert TelemetryConfig.model_validate(section).active(env) is on


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y", False),
        ("", False),
        ("00-" + "a" * 300, False),
    ],
)
def test_traceparent_is_parsed_by_the_w3c_rules(value: str, valid: bool) -> None:
    parsed = parse_traceparent(value)
    assert (parsed is not None) is valid
    if parsed is not None:
        again = traceparent(parsed).decode()
        assert again[3:52] == value[3:52] and again.startswith("00-")  # re-emitted as 00


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc", True),
        ("a.b:c-d_e", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ("ünï", False),
        ("a/b", False),
    ],
)
def test_request_ids_are_checked(value: str, ok: bool) -> None:
    assert (valid_request_id(value) == value) is ok


@pytest.fixture(scope="module")
def traced_worker(worker_logs: Path) -> Iterator[tuple[WorkerProcess, OtlpReceiver]]:
    with OtlpReceiver() as receiver:
        worker = start_worker(
            "magika-engine",
            worker_logs,
            "--config",
            str(MODELS),
            "--runtime",
            "wasm",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "w1"},
        )
        try:
            yield worker, receiver
        finally:
            worker.stop_cleanly()


@pytest.mark.slow
def test_a_request_into_a_wasm_guest_is_traced_under_the_callers_span(
    traced_worker: tuple[WorkerProcess, OtlpReceiver],
) -> None:
    worker, receiver = traced_worker
    body = {
        "inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\n"]}]
    }
    r = httpx.post(
        f"{worker.url}/v2/models/magika-engine/infer",
        json=body,
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "wasm-1"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    names = {"replica magika-engine", "infer magika-engine", "wasm infer magika-engine"}
    everything = receiver.wait_for(names, TRACE)
    spans = {s.name: s for s in everything if s.name in names}
    replica = spans["replica magika-engine"]
    inference = spans["infer magika-engine"]
    guest = spans["wasm infer magika-engine"]
    assert {s.service for s in spans.values()} == {"w1"}
    assert replica.parent_span_id == PARENT
    assert replica.attributes["edgeinfer.request_id"] == "wasm-1"
    assert replica.attributes["edgeinfer.runtime"] == "wasm"
    assert replica.attributes["http.response.status_code"] == 200
    assert inference.parent_span_id == replica.span_id
    assert inference.attributes["gen_ai.operation.name"] == "infer"
    # Inside the inference span (FastAPI's own endpoint span may sit between).
    parents = {s.span_id: s.parent_span_id for s in everything}
    chain, at = [], guest.parent_span_id
    while at in parents and len(chain) < 10:
        chain.append(at)
        at = parents[at]
    assert inference.span_id in chain
    assert guest.attributes["edgeinfer.wasm.abi"] == "compute"
    assert guest.attributes["edgeinfer.wasm.traceparent"] == f"00-{TRACE}-{guest.span_id}-01"
    assert replica.start_ns <= inference.start_ns <= guest.start_ns
    assert guest.end_ns <= inference.end_ns <= replica.end_ns


def _run_middleware(capture: bool, body: bytes, chunks: list[bytes]) -> dict[str, Any]:
    """The middleware around a FAKE app (it answers ``chunks`` as an SSE stream, as the
    chat route does); the inference span's attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def fake_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    middleware = TracingMiddleware(
        fake_app,
        provider.get_tracer("t"),
        model="m",
        runtime="llama",
        device="cpu",
        capture_prompts=capture,
    )
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    parts = [body[:10], body[10:]]

    async def receive() -> dict[str, Any]:
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message: Any) -> None:
        pass

    asyncio.run(middleware(scope, receive, send))
    (inference,) = [s for s in exporter.get_finished_spans() if s.name == "chat m"]
    return dict(inference.attributes or {})


STREAM = [
    b'data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]


def test_prompts_are_recorded_only_when_asked_and_bounded() -> None:
    body = b'{"messages":[{"role":"user","content":"' + b"p" * 9000 + b'"}]}'
    off = _run_middleware(False, body, STREAM)
    assert "gen_ai.prompt" not in off
    assert off["gen_ai.usage.input_tokens"] == 12 and off["gen_ai.usage.output_tokens"] == 2
    assert list(off["gen_ai.response.finish_reasons"]) == ["length"]
    assert off["gen_ai.server.time_to_first_token"] > 0
    on = _run_middleware(True, body, STREAM)
    assert len(on["gen_ai.prompt"]) == 4096 and on["gen_ai.prompt"].startswith('{"messages"')
