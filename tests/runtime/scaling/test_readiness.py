"""runtime.scaling.replica.HttpReadiness against a real HTTP server on loopback that
answers ``/v2/health/ready`` as the test scripts it (no worker, no model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtime.errors import ModelNotReady
from runtime.scaling.replica import HttpReadiness, Replica, free_port
from tests.runtime.scaling.fakes import FakeProcess


async def _serve(answers: list[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    """A server whose health route gives ``answers`` in turn, then the last forever."""
    seen = iter(answers)
    last: dict[str, Any] = {}

    async def ready(_: web.Request) -> web.Response:
        nonlocal last
        last = next(seen, last)
        return web.Response(text=json.dumps(last), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def _check(
    answers: list[dict[str, Any]],
    then: Callable[[Replica], Awaitable[None]],
    clock: Callable[[], float] = lambda: 0.0,
) -> None:
    async def scenario() -> None:
        runner, port = await _serve(answers)
        try:
            async with aiohttp.ClientSession() as session:
                replica = Replica(
                    model="m",
                    port=port,
                    process=FakeProcess(1),
                    started=0.0,
                    readiness=HttpReadiness(session, clock, limit_s=3),
                )
                await then(replica)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_ready_after_loading_reports_the_cold_start_phases() -> None:
    loading = {"ready": False}
    done = {"ready": True, "load": {"phases": {"resolve": 0.5, "load": 1.25, "warmup": 0.25}}}

    async def then(replica: Replica) -> None:
        cold = await replica.ready()
        assert cold.phases == {"spawn": 0.0, "load": 1.75, "warmup": 0.25}

    _check([loading, loading, done], then)


def test_a_load_error_is_model_not_ready_with_the_error() -> None:
    async def then(replica: Replica) -> None:
        with pytest.raises(ModelNotReady) as caught:
            await replica.ready()
        assert caught.value.status == 503
        assert "failed to load: no such file m.onnx" in caught.value.message

    _check([{"ready": False}, {"ready": False, "error": "no such file m.onnx"}], then)


def test_a_process_that_exits_while_starting_is_model_not_ready() -> None:
    async def then(replica: Replica) -> None:
        process = replica.process
        assert isinstance(process, FakeProcess)
        process.exit(7)
        with pytest.raises(ModelNotReady) as caught:
            await replica.ready()
        assert "exited with 7 while starting" in caught.value.message

    _check([{"ready": False}], then)


def test_a_replica_that_never_says_ready_runs_out_of_time() -> None:
    ticks = iter(range(1000))  # a FAKE clock: one second per look

    async def then(replica: Replica) -> None:
        with pytest.raises(ModelNotReady) as caught:
            await replica.ready()
        assert "did not become ready in 3s" in caught.value.message

    _check([{"ready": False}], then, clock=lambda: float(next(ticks)))


def test_a_port_held_by_another_models_worker_is_never_ready() -> None:
    """Two workers started together were once handed one port: the second could not
    bind it and the first answered for both, so requests for one model reached the
    other (404). Readiness now checks the worker's model."""
    other = {"ready": True, "model": "someone-else", "load": {"phases": {}}}

    async def then(replica: Replica) -> None:
        with pytest.raises(ModelNotReady) as caught:
            await replica.ready()
        assert "held by a worker of 'someone-else'" in caught.value.message

    _check([other], then)


def test_its_own_models_worker_is_ready() -> None:
    mine = {"ready": True, "model": "m", "load": {"phases": {"load": 0.5}}}

    async def then(replica: Replica) -> None:
        assert (await replica.ready()).phases["load"] == 0.5

    _check([mine], then)


def test_free_port_never_hands_out_one_port_twice() -> None:
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
