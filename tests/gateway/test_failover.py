"""gateway.failover (one retry on the next model, only while nothing reached the
client) and gateway.aliases (weighted choice, failover order, shadow shares and their
bound), with FAKE attempts: coroutines that send what the test scripts (no network)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Send

from gateway.aliases import Router, path_rewrite
from gateway.failover import in_order
from runtime.errors import BadInput, ModelNotReady, ResponseCut
from runtime.spec.traffic import Alias

Script = list[Any]  # messages to send, floats to sleep, an exception to raise


def head(status: int) -> Message:
    return {"type": "http.response.start", "status": status, "headers": []}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def run(scripts: dict[str, Script], models: list[str], stall: float | None = None) -> Any:
    sent: list[Message] = []
    tried: list[str] = []

    async def client(message: Message) -> None:
        sent.append(message)

    async def attempt(model: str, send: Send) -> int:
        tried.append(model)
        status = 0
        for step in scripts[model]:
            if isinstance(step, Exception):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            if step["type"] == "http.response.start":
                status = step["status"]
            await send(step)
        return status

    async def go() -> Any:
        return await in_order(models, attempt, client, stall_seconds=stall)

    outcome = asyncio.run(go())
    return outcome, sent, tried


OK = [head(200), body(b"ok")]


def test_a_5xx_answer_is_dropped_unseen_and_the_next_model_answers() -> None:
    outcome, sent, tried = run({"a": [head(500), body(b"boom")], "b": OK}, ["a", "b", "c"])
    assert tried == ["a", "b"] and outcome.model == "b" and outcome.status == 200
    assert [m.get("body") for m in sent] == [None, b"ok"]
    assert (b"x-edgeinfer-target", b"b") in sent[0]["headers"]
    assert outcome.failed == (("a", "answered 500"),)


def test_an_error_before_the_answer_fails_over_but_a_client_error_does_not() -> None:
    outcome, _, tried = run({"a": [ModelNotReady("down")], "b": OK}, ["a", "b"])
    assert tried == ["a", "b"] and outcome.status == 200
    with pytest.raises(BadInput):
        run({"a": [BadInput("your fault")], "b": OK}, ["a", "b"])


def test_only_one_retry_and_the_last_answer_goes_out_as_it_is() -> None:
    outcome, sent, tried = run(
        {"a": [head(503)], "b": [head(502), body(b"bad")], "c": OK}, ["a", "b", "c"]
    )
    assert tried == ["a", "b"] and outcome.status == 502
    assert sent[0]["status"] == 502 and sent[1]["body"] == b"bad"


def test_never_after_the_first_byte_reached_the_client() -> None:
    script = [head(200), body(b"data: first\n\n", more=True), ResponseCut("cut")]
    with pytest.raises(ResponseCut):
        run({"a": script, "b": OK}, ["a", "b"])


def test_a_stream_that_fails_before_its_first_token_goes_to_the_next_model() -> None:
    error = body(b'data: {"error":{"message":"the replica stopped mid-answer"}}\n\n', more=True)
    outcome, sent, tried = run({"a": [head(200), error, ResponseCut("cut")], "b": OK}, ["a", "b"])
    assert tried == ["a", "b"] and outcome.model == "b"
    assert [m.get("body") for m in sent] == [None, b"ok"]


def test_a_stream_that_stalls_before_its_first_byte_goes_to_the_next_model() -> None:
    stalled = [head(200), body(b"", more=True), 30.0, body(b"late")]
    outcome, sent, tried = run({"a": stalled, "b": OK}, ["a", "b"], stall=0.05)
    assert tried == ["a", "b"] and outcome.model == "b"
    assert outcome.failed == (("a", "no first byte in 0.05 s"),)
    assert [m.get("body") for m in sent] == [None, b"ok"]  # nothing of a's answer


def test_a_single_model_passes_through() -> None:
    outcome, sent, _ = run({"a": [head(500), body(b"x")]}, ["a"], stall=0.01)
    assert outcome.status == 500 and sent[0]["status"] == 500


ALIAS = Alias.model_validate(
    {
        "name": "chat",
        "targets": [{"model": "stable", "weight": 95}, {"model": "canary", "weight": 5}],
        "shadow": {"model": "next", "percent": 10, "max_in_flight": 2},
        "failover": ["remote"],
    }
)


def test_targets_by_weight_with_the_others_in_failover_order() -> None:
    router = Router([ALIAS], CollectorRegistry(), random.Random(7))
    plans = [router.plan("chat") for _ in range(4000)]
    assert router.plan("stable") is None  # a model, not an alias
    chosen = Counter(p.models[0] for p in plans if p is not None)
    assert 0.04 < chosen["canary"] / 4000 < 0.06
    orders = {p.models for p in plans if p is not None}
    assert orders == {("stable", "canary", "remote"), ("canary", "stable", "remote")}
    shadowed = sum(1 for p in plans if p is not None and p.shadow == "next")
    assert 0.08 < shadowed / 4000 < 0.12


def test_shadow_copies_are_bounded_and_measured() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        router = Router([ALIAS], registry, random.Random(1))
        gate = asyncio.Event()

        async def slow(model: str) -> int:
            await gate.wait()
            return 200

        plan = next(p for p in iter(lambda: router.plan("chat"), None) if p.shadow)
        for _ in range(3):
            router.shadow(plan, slow)
        await asyncio.sleep(0)
        gate.set()
        await asyncio.sleep(0.01)
        labels = {"alias": "chat", "model": "next"}
        ran = registry.get_sample_value(
            "edgeinfer_alias_requests_total", {**labels, "role": "shadow", "status": "200"}
        )
        skipped = registry.get_sample_value(
            "edgeinfer_alias_requests_total", {**labels, "role": "shadow_skipped", "status": "-"}
        )
        assert (ran, skipped) == (2.0, 1.0)
        await router.close()

    asyncio.run(scenario())


# (target, suffix) -> rewritten for model "b" of alias "a"
PATHS = [
    ("/v2/models/a/infer", "/infer", "/v2/models/b/infer"),
    ("/v2/models/a/versions/2/infer?x=1", "/infer", "/v2/models/b/versions/2/infer?x=1"),
    ("/v2/models/%61/infer?x=1", "/infer", "/v2/models/b/infer?x=1"),
]


@pytest.mark.parametrize(("target", "suffix", "expected"), PATHS)
def test_path_rewrite(target: str, suffix: str, expected: str) -> None:
    assert path_rewrite(target, "a", suffix, b"{}")("b") == (expected, b"{}")
