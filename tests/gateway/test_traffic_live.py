"""Traffic control end to end: the real gateway in front of a real SmolLM2 worker
(llama.cpp), one slot (container-concurrency 1, max-scale 1) so the queue decides who
goes next. Priority classes and shedding, turns across tenants, deadline refusal from
the measured service time, and token quotas exact to the token."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import SMOLLM2, GatewayServer

pytestmark = pytest.mark.slow

Factory = Callable[..., GatewayServer]
KEYS = {
    "app": "sk-app-0123456789",
    "batch": "sk-batch-0123456789",
    "std": "sk-std-0123456789",
    "quota": "sk-quota-0123456789",
}
ONE_SLOT = {**SMOLLM2, "scaling": {"max-scale": 1, "container-concurrency": 1, "target": 1}}
LONG = {"messages": [{"role": "user", "content": "Count to 100."}], "max_tokens": 200}
SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}


def gateway(factory: Factory, **extra: Any) -> GatewayServer:
    keys = [
        {
            "name": "app",
            "key": KEYS["app"],
            "priorities": ["critical"],
            "fairness_ids": True,
        },
        {"name": "batch", "key": KEYS["batch"], "priority": "sheddable"},
        {"name": "std", "key": KEYS["std"]},
        {
            "name": "quota",
            "key": KEYS["quota"],
            "quota": {"input_tokens_per_minute": 60, "output_tokens_per_minute": 10},
        },
    ]
    return factory([ONE_SLOT], gateway={"auth": {"api_keys": keys}, **extra})


def chat(gw: GatewayServer, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "smollm2", "temperature": 0, **body},
        headers={"authorization": f"Bearer {KEYS[key]}", **headers},
        timeout=300,
    )


class Calls:
    """Requests in threads; ``done`` lists their names in the order they finished."""

    def __init__(self, gw: GatewayServer) -> None:
        self.gw = gw
        self.done: list[str] = []
        self.status: dict[str, int] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def start(self, name: str, key: str, body: dict[str, Any], **headers: str) -> None:
        def call() -> None:
            r = chat(self.gw, key, body, **headers)
            with self.lock:
                self.done.append(name)
                self.status[name] = r.status_code

        thread = threading.Thread(target=call)
        thread.start()
        self.threads.append(thread)

    def queued(self, n: int) -> None:
        self.gw.wait_for(lambda: self.gw.status("smollm2").queued == n)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(300)


def test_classes_shedding_and_header_checks(gateway_factory: Factory) -> None:
    gw = gateway(gateway_factory)
    assert chat(gw, "std", SHORT).status_code == 200  # warm
    calls = Calls(gw)
    calls.start("long", "std", LONG)
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 1)
    shed = chat(gw, "batch", SHORT)  # saturated: refused at once, never queued
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert "sheddable" in shed.json()["error"]["message"]
    assert calls.done == []  # answered while the long request still ran
    calls.start("standard", "std", SHORT)
    calls.queued(1)
    calls.start("critical", "app", SHORT, **{"x-edgeinfer-priority": "critical"})
    calls.queued(2)
    calls.join()
    assert calls.done == ["long", "critical", "standard"]
    assert set(calls.status.values()) == {200}

    denied = chat(gw, "batch", SHORT, **{"x-edgeinfer-priority": "critical"})
    assert denied.status_code == 403 and "x-edgeinfer-priority" in denied.json()["error"]["message"]
    bad = chat(gw, "app", SHORT, **{"x-edgeinfer-fairness-id": "a b"})
    assert bad.status_code == 400 and "x-edgeinfer-fairness-id" in bad.json()["error"]["message"]
    assert chat(gw, "std", SHORT).status_code == 200  # still serving


def test_tenants_take_turns(gateway_factory: Factory) -> None:
    gw = gateway(gateway_factory)
    calls = Calls(gw)
    calls.start("long", "std", LONG)
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 1)
    for i in range(3):  # a burst of one app user...
        calls.start(f"burst{i}", "app", SHORT, **{"x-edgeinfer-fairness-id": "user-1"})
        calls.queued(i + 1)
    calls.start("steady", "app", SHORT, **{"x-edgeinfer-fairness-id": "user-2"})  # ...and another
    calls.queued(4)
    calls.join()
    assert calls.done == ["long", "burst0", "steady", "burst1", "burst2"]


def test_a_deadline_the_queue_cannot_meet_is_504_at_once(gateway_factory: Factory) -> None:
    gw = gateway(gateway_factory)
    started = time.monotonic()
    assert chat(gw, "std", LONG).status_code == 200  # measures the service time
    measured = gw.on_loop(lambda: gw.pool("smollm2").service.seconds)
    assert measured is not None and 0 < measured < time.monotonic() - started
    calls = Calls(gw)
    calls.start("long", "std", LONG)
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 1)
    r = chat(gw, "std", SHORT, **{"x-edgeinfer-timeout": f"{measured / 2:.3f}"})
    assert r.status_code == 504
    assert "cannot meet its deadline" in r.json()["error"]["message"]
    assert calls.done == []  # refused before the request ahead of it ended
    calls.join()
    assert calls.status == {"long": 200}


def test_token_quotas_are_exact_to_the_token(gateway_factory: Factory) -> None:
    gw = gateway(gateway_factory)
    prompt = completion = 0
    answers = 0
    while True:
        stream = answers % 2 == 1  # streamed answers are counted too
        options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        r = chat(gw, "quota", {**SHORT, **options})
        if r.status_code == 429:
            break
        assert r.status_code == 200
        answers += 1
        if stream:
            events = [line[6:] for line in r.text.splitlines() if line.startswith("data: {")]
            usage = json.loads(events[-1])["usage"]
        else:
            usage = r.json()["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1
    # refused exactly when a quota was reached, naming it and the exact count
    if prompt >= 60:
        assert f"input_tokens_per_minute quota: {prompt} of 60" in message
    else:
        assert completion >= 10
        assert f"output_tokens_per_minute quota: {completion} of 10" in message
    assert gw.on_loop(lambda: gw.app.quotas.used("quota", "output", "minute", gw.clock())) == (
        completion
    )
    gw.advance(60)  # the next minute
    assert chat(gw, "quota", SHORT).status_code == 200
    assert chat(gw, "std", SHORT).status_code == 200  # other keys never limited
