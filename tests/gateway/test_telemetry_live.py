"""Traces and usage with real parts: a real gateway on a loopback port, a real SmolLM2
worker process it starts from zero, and a real OTLP/HTTP receiver (aiohttp, protobuf
decoded with OpenTelemetry's own messages) that both processes export to, as
configured by the file's ``telemetry:`` section."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from gateway.server import build_gateway
from runtime.settings import Settings
from runtime.spec.model import load_config
from tests.gateway.conftest import SMOLLM2, FakeClock, GatewayServer
from tests.gateway.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

WEB = {"Authorization": "Bearer sk-web-0123456789"}
BATCH = {"Authorization": "Bearer sk-batch-0123456789"}
ADMIN = {"Authorization": "Bearer sk-admin-0123456789"}
TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "10f067aa0ba902b7"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, OtlpReceiver]]:
    tmp = tmp_path_factory.mktemp("telemetry")
    with OtlpReceiver() as receiver:
        path = tmp / "models.yaml"
        config = {
            "models": [{**SMOLLM2, "scaling": {"initial-scale": 0, "max-scale": 1}}],
            "gateway": {
                "tick_seconds": 60,
                "auth": {
                    "api_keys": [
                        {"name": "web", "key": WEB["Authorization"][7:]},
                        {"name": "batch", "key": BATCH["Authorization"][7:]},
                    ],
                    "admin_key": ADMIN["Authorization"][7:],
                },
            },
            "telemetry": {"enabled": True, "endpoint": receiver.url, "export_delay_ms": 50},
        }
        path.write_text(yaml.safe_dump(config))
        clock = FakeClock()
        app = build_gateway(
            load_config(path), Settings(state_dir=tmp / "state"), clock=clock, environ={}
        )
        server = GatewayServer(app, clock)
        server.start()
        try:
            yield server, receiver
        finally:
            server.stop()


def _chat(url: str, headers: dict[str, str], **extra: Any) -> httpx.Response:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "temperature": 0,
        **extra,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def _stream_usage(r: httpx.Response) -> dict[str, int]:
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    usage = [e["usage"] for e in events if e.get("usage")]
    assert len(usage) == 1
    return usage[0]


def _by(spans: list[ReceivedSpan], name: str, service: str = "") -> ReceivedSpan:
    """The one span named ``name`` (of ``service``: FastAPI adds spans of its own to the
    worker's, one named as the route)."""
    found = [s for s in spans if s.name == name and service in (s.service, "")]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_one_trace_runs_from_the_client_through_the_cold_start_into_the_worker(
    live: tuple[GatewayServer, OtlpReceiver],
) -> None:
    gw, receiver = live
    r = _chat(
        gw.url,
        {**WEB, "traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "live-1"},
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200
    usage = _stream_usage(r)
    names = {
        "POST /v1/chat/completions",
        "queue wait",
        "cold start",
        "spawn",
        "load",
        "warmup",
        "replica smollm2",
        "chat smollm2",
    }
    spans = receiver.wait_for(names, TRACE)
    gateway = _by(spans, "POST /v1/chat/completions", "edgeinfer-gateway")
    assert gateway.parent_span_id == PARENT
    wait, cold = _by(spans, "queue wait"), _by(spans, "cold start")
    assert wait.parent_span_id == gateway.span_id and cold.parent_span_id == wait.span_id
    phases = [_by(spans, p) for p in ("spawn", "load", "warmup")]
    assert all(p.parent_span_id == cold.span_id for p in phases)
    spawn, load, warmup = phases
    assert spawn.start_ns == cold.start_ns and warmup.end_ns == cold.end_ns
    assert load.end_ns == warmup.start_ns and load.start_ns >= cold.start_ns
    assert cold.attributes["edgeinfer.cold_start.load_s"] == pytest.approx(load.seconds, abs=1e-6)
    assert load.seconds > 0 and spawn.seconds > 0
    # The worker's spans join the gateway's through the traceparent it sent.
    replica = _by(spans, "replica smollm2")
    inference = _by(spans, "chat smollm2")
    assert replica.service == "edgeinfer-worker"
    assert replica.parent_span_id == gateway.span_id
    assert replica.attributes["edgeinfer.request_id"] == "live-1"
    assert inference.parent_span_id == replica.span_id
    assert gateway.start_ns <= wait.start_ns <= cold.start_ns
    assert cold.end_ns <= replica.start_ns <= replica.end_ns
    a = inference.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "smollm2"
    assert a["edgeinfer.runtime"] == "llama" and a["edgeinfer.device"] == "cpu"
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert set(a["gen_ai.response.finish_reasons"]) <= {"stop", "length"}
    assert 0 < a["gen_ai.server.time_to_first_token"] < replica.seconds
    g = gateway.attributes
    assert g["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert g["edgeinfer.key"] == "web" and g["edgeinfer.tier"] == "llama-cpu"
    assert 0 < g["gen_ai.server.time_to_first_token"] < gateway.seconds
    everything = json.dumps([s.attributes for s in spans])
    assert "sk-web" not in everything and "Name a colour" not in everything  # no prompts


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_usage_per_key_sums_the_tokens_clients_received(
    live: tuple[GatewayServer, OtlpReceiver],
) -> None:
    gw, _ = live
    before = httpx.get(f"{gw.url}/admin/usage", headers=ADMIN).json()
    got: dict[str, list[int]] = {"web": [0, 0], "batch": [0, 0]}
    for key, headers, stream in (
        ("web", WEB, False),
        ("web", WEB, True),
        ("batch", BATCH, False),
        ("batch", BATCH, True),
        ("batch", BATCH, False),
    ):
        if stream:
            r = _chat(gw.url, headers, stream=True, stream_options={"include_usage": True})
            assert r.status_code == 200
            usage = _stream_usage(r)
        else:
            r = _chat(gw.url, headers)
            assert r.status_code == 200
            usage = r.json()["usage"]
        got[key][0] += usage["prompt_tokens"]
        got[key][1] += usage["completion_tokens"]
    bad = httpx.post(
        f"{gw.url}/v1/chat/completions", json={"model": "made-up", "messages": []}, headers=WEB
    )
    assert bad.status_code == 404
    after = httpx.get(f"{gw.url}/admin/usage", headers=ADMIN).json()
    metrics = httpx.get(f"{gw.url}/metrics", headers=ADMIN).text
    for key, (prompt, completion) in got.items():
        old = before["by_key"].get(key, {"input_tokens": 0, "output_tokens": 0, "requests": 0})
        new = after["by_key"][key]
        assert new["input_tokens"] - old["input_tokens"] == prompt
        assert new["output_tokens"] - old["output_tokens"] == completion
        m = "edgeinfer_key_tokens_total"
        assert _metric(metrics, m, key=key, model="smollm2", kind="output") == new["output_tokens"]
        assert _metric(metrics, m, key=key, model="smollm2", kind="input") == new["input_tokens"]
    assert (
        after["by_key"]["batch"]["requests"] - before["by_key"].get("batch", {}).get("requests", 0)
        == 3
    )
    assert after["by_key"]["web"]["errors"] >= 1  # the unknown model, counted as (unknown)
    assert after["by_model"]["(unknown)"]["errors"] >= 1
    assert "made-up" not in metrics
    # A time after every request: nothing since.
    later = httpx.get(
        f"{gw.url}/admin/usage", params={"since": "2999-01-01T00:00:00Z"}, headers=ADMIN
    )
    assert later.status_code == 200 and later.json()["by_key"] == {}
    for since in ("yesterday", "2026-01-01T00:00:00", "-5", "nan"):
        r = httpx.get(f"{gw.url}/admin/usage", params={"since": since}, headers=ADMIN)
        assert r.status_code == 400, since
    assert httpx.get(f"{gw.url}/admin/usage", headers=WEB).status_code == 403
