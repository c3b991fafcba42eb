"""Traces, request ids and the access log, through a real gateway on a loopback port in
front of a real uvicorn replica (``EchoReplica``), spans caught by the SDK's in-memory
exporter.

The replica's start is a FAKE launcher's (:class:`EchoLauncher`): its cold start
record has phases the test chose, so their spans can be checked to the nanosecond.
The same path with a real worker and a real OTLP receiver is
``tests/gateway/test_telemetry_live.py``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.access_log import ACCESS_LOGGER
from gateway.app import Gateway
from gateway.auth import AuthConfig, Authenticator
from gateway.config import GatewayConfig
from runtime.scaling.replica import ColdStart, Replica
from runtime.scaling.supervisor import Supervisor
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Device, Tier
from runtime.worker.tracing import parse_traceparent, valid_request_id
from tests.gateway.conftest import SMOLLM2, FakeClock, GatewayServer
from tests.gateway.replicas import EchoReplica
from tests.runtime.scaling.fakes import FakeProcess

PHASES = {"spawn": 0.02, "load": 0.125, "warmup": 0.0075}
STARTING = 0.5  # pool-clock seconds from the launch to ready (more than the phases)
SECRET = "sk-web-secret-0123456789"
KEY = {"Authorization": f"Bearer {SECRET}"}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class EchoLauncher:
    """A FAKE launcher: every replica is the one ``EchoReplica`` (a real HTTP server),
    on the llama/cpu tier, ready after a real short wait with a cold start of
    :data:`PHASES` ending at that moment on the pool's clock."""

    def __init__(self, echo: EchoReplica, clock: FakeClock) -> None:
        self.echo = echo
        self.clock = clock
        self.started = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __call__(self, spec: ModelSpec, tier: Tier | None = None) -> Replica:
        self.started += 1

        async def ready(replica: Replica) -> ColdStart:
            await asyncio.sleep(0.05)
            self.clock.offset += STARTING  # the replica takes this long to be ready
            return ColdStart(phases=dict(PHASES), finished_at=self.clock())

        return Replica(
            model=spec.name,
            port=self.echo.port,
            process=FakeProcess(pid=4000 + self.started),
            started=self.clock(),
            tier=tier or Tier(RuntimeName.LLAMA, Device.CPU),
            readiness=ready,
        )


@pytest.fixture
def traced() -> Iterator[tuple[GatewayServer, EchoReplica, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock()
    spec = {**SMOLLM2, "scaling": {"initial-scale": 0}}  # at zero: the first request waits
    config = ModelConfig.model_validate({"models": [spec], "source": "test.yaml"})
    settings = GatewayConfig.model_validate(
        {"auth": {"api_keys": [{"name": "web", "key": SECRET}], "admin_key": "admin-secret"}}
    )
    with EchoReplica() as echo:
        supervisor = Supervisor(
            config, launcher=EchoLauncher(echo, clock), clock=clock, tick=60, max_queue=10
        )
        auth = Authenticator.from_config(AuthConfig.model_validate(settings.auth), {})
        app = Gateway(config, settings, supervisor, auth, clock=clock, tracer_provider=provider)
        server = GatewayServer(app, clock)
        server.start()
        try:
            yield server, echo, exporter
        finally:
            server.stop()


def chat(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "secret prompt"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def spans_of(exporter: InMemorySpanExporter, trace_id: int, n: int) -> list[ReadableSpan]:
    """The trace's spans once ``n`` have ended (the gateway span ends after the answer
    was sent: this waits for the server's thread, not for time to pass)."""
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(spans) >= n:
            return spans
        assert time.monotonic() < deadline, [s.name for s in spans]
        time.sleep(0.01)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_a_cold_start_is_traced_phase_by_phase_under_the_clients_trace(
    traced: tuple[GatewayServer, EchoReplica, InMemorySpanExporter],
) -> None:
    gw, echo, exporter = traced
    headers = {
        **KEY,
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        "tracestate": "vendor=made-up",
        "x-request-id": "req-42.a:b",
    }
    r = chat(gw.url, headers)
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42.a:b"
    spans = spans_of(exporter, int(CLIENT_TRACE, 16), 6)

    gateway = one(spans, "POST /v1/chat/completions")
    assert gateway.kind is SpanKind.SERVER
    assert gateway.parent is not None and gateway.parent.span_id == int(CLIENT_SPAN, 16)
    attrs = dict(gateway.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "smollm2"
    assert attrs["edgeinfer.key"] == "web"
    assert attrs["edgeinfer.request_id"] == "req-42.a:b"
    assert attrs["edgeinfer.tier"] == "llama-cpu"
    assert attrs["edgeinfer.role"] == "primary"
    assert attrs["http.response.status_code"] == 200
    everything = json.dumps([dict(s.attributes or {}) for s in spans])
    assert SECRET not in everything and "secret prompt" not in everything

    wait = one(spans, "queue wait")
    cold = one(spans, "cold start")
    assert wait.parent is not None and wait.parent.span_id == gateway.context.span_id
    assert cold.parent is not None and cold.parent.span_id == wait.context.span_id
    assert dict(cold.attributes or {})["edgeinfer.runtime"] == "llama"
    assert dict(cold.attributes or {})["edgeinfer.device"] == "cpu"
    assert cold.end_time is not None and cold.start_time is not None
    # From the launch to ready: at least STARTING (the clock moved that much), plus the
    # real time the launch and the readiness took.
    assert cold.end_time - cold.start_time >= STARTING * 1e9
    assert wait.start_time is not None and wait.end_time is not None
    assert wait.start_time <= cold.start_time  # this request started it
    assert gateway.start_time is not None and gateway.end_time is not None
    spawn, load, warmup = (one(spans, p) for p in PHASES)
    for span in (spawn, load, warmup):
        assert span.parent is not None and span.parent.span_id == cold.context.span_id
    assert spawn.start_time == cold.start_time  # spawn from the launch
    assert warmup.end_time == cold.end_time  # load, then warm-up, up to ready
    assert load.end_time == warmup.start_time
    for span, seconds in zip((spawn, load, warmup), PHASES.values(), strict=True):
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time - span.start_time == pytest.approx(seconds * 1e9, abs=2)
    assert cold.end_time <= wait.end_time <= gateway.end_time

    # The replica got a traceparent the gateway wrote (its own span as parent), the
    # request id, and not the client's tracestate.
    seen = {k: v for k, v in echo.seen[-1]["headers"]}
    sent = parse_traceparent(seen["traceparent"])
    assert sent is not None
    assert sent.trace_id == int(CLIENT_TRACE, 16)
    assert sent.span_id == gateway.context.span_id
    assert seen["x-request-id"] == "req-42.a:b"
    assert "tracestate" not in seen


def test_a_warm_request_has_no_cold_start_span(
    traced: tuple[GatewayServer, EchoReplica, InMemorySpanExporter],
) -> None:
    gw, _, exporter = traced
    assert chat(gw.url, KEY).status_code == 200  # the cold one
    exporter.clear()
    assert httpx.get(f"{gw.url}/v1/models", headers=KEY).status_code == 200  # not traced
    trace = "0af7651916cd43dd8448eb211c80319c"
    r = chat(gw.url, {**KEY, "traceparent": f"00-{trace}-b7ad6b7169203331-01"})
    assert r.status_code == 200
    spans = spans_of(exporter, int(trace, 16), 2)
    assert {s.name for s in spans} == {"POST /v1/chat/completions", "queue wait"}
    assert [s.name for s in exporter.get_finished_spans() if s.name.startswith("GET")] == []


@pytest.mark.parametrize(
    "bad",
    [
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 + fields
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    ],
)
def test_an_invalid_traceparent_is_never_forwarded(
    traced: tuple[GatewayServer, EchoReplica, InMemorySpanExporter], bad: str
) -> None:
    gw, echo, exporter = traced
    r = chat(gw.url, {**KEY, "traceparent": bad, "x-request-id": "no spaces allowed"})
    assert r.status_code == 200
    seen = {k: v for k, v in echo.seen[-1]["headers"]}
    sent = parse_traceparent(seen["traceparent"])
    assert sent is not None and seen["traceparent"] != bad
    assert sent.trace_id != int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
    # A request id the client may not choose is replaced by one of the gateway's.
    made = r.headers["x-request-id"]
    assert made != "no spaces allowed" and valid_request_id(made) == made
    assert seen["x-request-id"] == made
    gateway = one(spans_of(exporter, sent.trace_id, 2), "POST /v1/chat/completions")
    assert gateway.parent is None  # a new root


def test_the_access_log_has_one_json_line_per_request(
    traced: tuple[GatewayServer, EchoReplica, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, _, _ = traced
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        assert chat(gw.url, {**KEY, "x-request-id": "first"}).status_code == 200
        assert chat(gw.url, {"Authorization": "Bearer wrong"}).status_code == 401
        r = httpx.get(f"{gw.url}/v1/models/nope", headers=KEY)
        assert r.status_code == 404
        deadline = time.monotonic() + 30
        while len([x for x in caplog.records if x.name == ACCESS_LOGGER]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    lines: list[dict[str, Any]] = [
        json.loads(x.getMessage()) for x in caplog.records if x.name == ACCESS_LOGGER
    ]
    first, refused, unknown = lines
    assert first["request_id"] == "first"
    assert (first["key"], first["model"], first["tier"], first["status"]) == (
        "web",
        "smollm2",
        "llama-cpu",
        200,
    )
    assert first["route"] == "/v1/chat/completions"
    assert first["cold_start_ms"] == pytest.approx(sum(PHASES.values()) * 1000)
    assert first["queue_ms"] >= 0 and first["latency_ms"] > 0
    assert (refused["key"], refused["status"], refused["model"]) == ("(none)", 401, "-")
    assert (unknown["status"], unknown["route"]) == (404, "/v1/models/{name}")
    assert all(SECRET not in json.dumps(line) for line in lines)
