"""A sheddable request at a saturated model (issue 18): the real gateway in front of a
hand-written replica that holds its one slot (container-concurrency 1) until the test
lets it answer. The refusal is a 429 in the API's error shape with ``Retry-After`` and
``x-request-id``, counted in ``edgeinfer_requests_total`` and nowhere else (no access
line, no usage row); the held request is served once released, and then a sheddable
request is served too (a free slot: no refusal)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.access_log import ACCESS_LOGGER
from tests.gateway.conftest import GatewayServer
from tests.gateway.replicas import RawReplica

Factory = Callable[..., GatewayServer]
KEYS = {"std": "sk-std-0123456789", "batch": "sk-batch-0123456789"}
INFER = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


class Held:
    """Answers each request once ``release`` is set (until then it holds the slot)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        await asyncio.to_thread(self.release.wait, 60)
        body = b'{"model_name":"held","outputs":[]}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()


@pytest.fixture
def held() -> Iterator[tuple[Held, RawReplica]]:
    handler = Held()
    with RawReplica(handler) as replica:
        yield handler, replica
        handler.release.set()


def test_a_shed_request_is_a_prebuilt_429_and_a_counter(
    held: tuple[Held, RawReplica],  # first: torn down after the gateway
    gateway_factory: Factory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, replica = held
    model = {
        "name": "held",
        "task": "tensor",
        "endpoint": replica.url,
        "scaling": {"container-concurrency": 1},
    }
    keys = [
        {"name": "std", "key": KEYS["std"]},
        {"name": "batch", "key": KEYS["batch"], "priority": "sheddable"},
    ]
    gw = gateway_factory([model], gateway={"auth": {"api_keys": keys, "admin_key": "sk-adm"}})
    url = f"{gw.url}/v2/models/held/infer"
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(httpx.post(url, json=INFER, headers=_key("std"), timeout=60))
    )
    first.start()
    gw.wait_for(lambda: gw.status("held").in_flight == 1)

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        oip = httpx.post(url, json=INFER, headers=_key("batch"))
        openai_shape = httpx.post(  # an OpenAI route's refusal: its own shape
            f"{gw.url}/v1/embeddings",
            json={"model": "held", "input": "x"},
            headers=_key("batch"),
        )
        again = httpx.post(url, json=INFER, headers=_key("batch"))
    for r in (oip, openai_shape, again):
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert len(r.headers["x-request-id"]) == 24
    assert "sheddable" in oip.json()["error"]
    assert openai_shape.json()["error"]["code"] == "rate_limit_exceeded"
    assert "sheddable" in openai_shape.json()["error"]["message"]
    assert oip.content == again.content  # the same prebuilt body
    assert oip.headers["x-request-id"] != again.headers["x-request-id"]
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]  # no access line

    handler.release.set()
    first.join(60)
    assert [r.status_code for r in answers] == [200]
    # A free slot: the same sheddable key is served, not refused.
    assert httpx.post(url, json=INFER, headers=_key("batch")).status_code == 200
    registry = gw.app.metrics.registry
    shed = {"model": "held", "status": "429"}
    oip_route = "/v2/models/{name}/infer"
    assert _sample(registry, route=oip_route, **shed) == 2
    assert _sample(registry, route="/v1/embeddings", **shed) == 1
    assert _sample(registry, route=oip_route, model="held", status="200") == 2
    usage = httpx.get(f"{gw.url}/admin/usage", headers={"authorization": "Bearer sk-adm"})
    by_key = usage.json()["by_key"]
    assert by_key["batch"]["requests"] == 1  # the served one: a shed request is no usage
    assert by_key["std"]["requests"] == 1


def _key(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def _sample(registry: Any, **labels: str) -> float:
    return registry.get_sample_value("edgeinfer_requests_total", labels) or 0.0
