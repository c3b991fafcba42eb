"""Aliases end to end: the real gateway, real MiniLM and SmolLM2 workers, and a
hand-written replica (tests/gateway/replicas.py) standing in for a broken or stalled
``endpoint:`` model. Failover to the real model, the target in the answer's header and
in the metrics, shadow copies measured and discarded, weights over two real models."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.server import build_gateway
from runtime.settings import Settings
from runtime.spec.model import load_config
from tests.gateway.conftest import MINILM, SMOLLM2, FakeClock, GatewayServer
from tests.gateway.replicas import RawReplica

pytestmark = pytest.mark.slow


@pytest.fixture
def started() -> Iterator[list[GatewayServer]]:
    servers: list[GatewayServer] = []
    yield servers
    for server in servers:
        server.stop()


def gateway(
    tmp_path: Path, started: list[GatewayServer], models: list[Any], aliases: list[Any]
) -> GatewayServer:
    path = tmp_path / "models.yaml"
    settings = {"tick_seconds": 60, "scale_to_zero_grace_seconds": 0}
    path.write_text(yaml.safe_dump({"models": models, "gateway": settings, "aliases": aliases}))
    clock = FakeClock()
    app = build_gateway(
        load_config(path), Settings(state_dir=tmp_path / "state"), clock=clock, environ={}
    )
    app.aliases._rng = random.Random(3)  # a fixed draw for the weighted test
    server = GatewayServer(app, clock)
    server.start()
    started.append(server)
    return server


async def answer_500(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
) -> None:
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom")
    await writer.drain()


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    await writer.drain()
    await reader.read(1)  # the first token never comes: wait until the gateway hangs up


async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    await writer.drain()
    writer.close()  # gone before the first token: the answer is cut


def endpoint(name: str, url: str, task: str) -> dict[str, Any]:
    return {"name": name, "task": task, "endpoint": url}


def metric(gw: GatewayServer, **labels: str) -> float:
    value = gw.app.metrics.registry.get_sample_value("edgeinfer_alias_requests_total", labels)
    return value or 0.0


def test_failover_shadow_and_weights(tmp_path: Path, started: list[GatewayServer]) -> None:
    with RawReplica(answer_500) as broken:
        minilm_b = {**MINILM, "name": "minilm-b"}
        gw = gateway(
            tmp_path,
            started,
            [MINILM, minilm_b, endpoint("broken", broken.url, "embedding")],
            [
                {
                    "name": "embed",
                    "targets": [{"model": "broken", "weight": 1}, {"model": "minilm", "weight": 0}],
                    "shadow": {"model": "minilm-b", "percent": 100},
                },
                {
                    "name": "canary",
                    "targets": [
                        {"model": "minilm", "weight": 3},
                        {"model": "minilm-b", "weight": 1},
                    ],
                },
            ],
        )
        for _ in range(3):
            r = httpx.post(
                f"{gw.url}/v1/embeddings", json={"model": "embed", "input": "hi"}, timeout=120
            )
            assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
            assert r.headers["x-edgeinfer-target"] == "minilm"
        assert broken.requests == 3  # each tried the broken model first, unseen
        # counted as the request ends, just after its last byte went out
        labels = {"alias": "embed", "model": "minilm", "role": "failover", "status": "200"}
        gw.wait_for(lambda: metric(gw, **labels) == 3)
        assert metric(gw, alias="embed", model="broken", role="failed", status="-") == 3
        # the shadow copies ran on the real second model, answers dropped, measured
        gw.wait_for(
            lambda: metric(gw, alias="embed", model="minilm-b", role="shadow", status="200") >= 1,
            timeout=180,
        )
        served = gw.on_loop(lambda: sum(r.served for r in gw.pool("minilm-b").replicas))
        assert served >= 1

        targets = []
        for _ in range(40):
            r = httpx.post(
                f"{gw.url}/v1/embeddings", json={"model": "canary", "input": "x"}, timeout=120
            )
            assert r.status_code == 200
            targets.append(r.headers["x-edgeinfer-target"])
        assert 0 < targets.count("minilm-b") < targets.count("minilm")
        gw.wait_for(
            lambda: (
                metric(gw, alias="canary", model="minilm", role="primary", status="200")
                == targets.count("minilm")
            )
        )
        # aliases are listed and ready like models
        listed = httpx.get(f"{gw.url}/v1/models").json()["data"]
        assert {"embed", "canary", "minilm"} <= {m["id"] for m in listed}
        assert httpx.get(f"{gw.url}/v2/models/canary/ready").status_code == 200
        assert httpx.get(f"{gw.url}/v1/models/embed").status_code == 200
        # the name a client made up is no alias and no metric label
        r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "nope", "input": "x"})
        assert r.status_code == 404


def test_a_stream_that_stalls_or_dies_before_its_first_token_fails_over(
    tmp_path: Path, started: list[GatewayServer]
) -> None:
    with RawReplica(stall) as stalled, RawReplica(die) as dying:
        gw = gateway(
            tmp_path,
            started,
            [
                SMOLLM2,
                endpoint("stalled", stalled.url, "chat"),
                endpoint("dying", dying.url, "chat"),
            ],
            [
                {
                    "name": "chat",
                    "targets": [{"model": "stalled", "weight": 1}],
                    "failover": ["smollm2"],
                    "stall_seconds": 1,
                },
                {
                    "name": "chat2",
                    "targets": [{"model": "dying", "weight": 1}],
                    "failover": ["smollm2"],
                },
            ],
        )
        for alias in ("chat", "chat2"):
            body = {
                "model": alias,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
                "stream": True,
            }
            url = f"{gw.url}/v1/chat/completions"
            with httpx.stream("POST", url, json=body, timeout=180) as r:
                text = "".join(r.iter_text())
            assert r.status_code == 200 and r.headers["x-edgeinfer-target"] == "smollm2"
            assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text
        assert stalled.requests == 1 and dying.requests == 1
        labels = {"alias": "chat", "model": "stalled", "role": "failed", "status": "-"}
        gw.wait_for(lambda: metric(gw, **labels) == 1)
