"""The gateway with embedded scale-to-zero, end to end: real gateway, real workers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import MINILM, SMOLLM2, GatewayServer

pytestmark = pytest.mark.slow

Factory = Callable[..., GatewayServer]


def with_scaling(spec: dict[str, Any], **rule: Any) -> dict[str, Any]:
    return {**spec, "scaling": {"initial-scale": 0, **rule}}


def embed(gw: GatewayServer, text: str = "hello", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/embeddings",
        json={"model": "minilm", "input": text},
        headers=headers,
        timeout=120,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_scale_from_zero_and_back_to_zero(gateway_factory: Factory) -> None:
    gw = gateway_factory(
        [with_scaling(MINILM, window="6s", **{"scale-to-zero-pod-retention-period": "10s"})]
    )
    assert gw.status("minilm").ready == 0
    r = embed(gw)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
    info = gw.admin()["minilm"]
    assert info["replicas"]["ready"] == 1 and info["cold_starts"] == 1
    assert set(info["last_cold_start"]["phases"]) == {"spawn", "load", "warmup"}
    pid = gw.on_loop(lambda: gw.pool("minilm").replicas[0].process.pid)

    # Knative: inactive after a stable window (6 s) without traffic, removed once the
    # retention period (10 s) has passed too.
    gw.run_for("minilm", 14)
    assert gw.status("minilm").ready == 1 and alive(pid)
    gw.run_for("minilm", 3)
    gw.wait_for(lambda: gw.status("minilm").ready == 0 and not alive(pid))
    assert gw.status("minilm").desired == 0

    assert embed(gw).status_code == 200  # and up again
    assert gw.admin()["minilm"]["cold_starts"] == 2


def test_concurrent_requests_during_one_cold_start(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM, **{"max-scale": 3})])

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            rs = await asyncio.gather(
                *(
                    client.post(
                        f"{gw.url}/v1/embeddings", json={"model": "minilm", "input": f"s{i}"}
                    )
                    for i in range(20)
                )
            )
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 20
    status = gw.status("minilm")
    assert status.ready == 1 and gw.admin()["minilm"]["cold_starts"] == 1


def test_queue_overflow_is_503_with_retry_after(gateway_factory: Factory) -> None:
    gw = gateway_factory(
        [with_scaling(SMOLLM2, **{"max-scale": 1, "container-concurrency": 1, "target": 1})],
        gateway={"max_queue": 1},
    )
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Count to 100."}],
        "max_tokens": 300,
        "temperature": 0,
    }
    results: list[int] = []

    def long_request() -> None:
        results.append(
            httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=120).status_code
        )

    first = threading.Thread(target=long_request)
    first.start()
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 1)
    second = threading.Thread(target=long_request)
    second.start()
    gw.wait_for(lambda: gw.status("smollm2").queued == 1)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "waiting already" in r.json()["error"]["message"]
    first.join()
    second.join()
    assert results == [200, 200]


def test_deadline_is_504(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    r = embed(gw, **{"x-edgeinfer-timeout": "0.05"})  # far shorter than a cold start
    assert r.status_code == 504
    assert "deadline" in r.json()["error"]["message"]
    r = embed(gw, **{"x-edgeinfer-timeout": "soon"})
    assert r.status_code == 400


def test_a_killed_worker_fails_its_request_and_is_replaced(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(SMOLLM2)])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    stream = client.completions.create(
        model="smollm2", prompt="1, 2, 3, 4, 5,", max_tokens=1000, temperature=0, stream=True
    )
    next(iter(stream))  # generating now
    pid = gw.on_loop(lambda: gw.pool("smollm2").replicas[0].process.pid)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="replica"):
        for _ in stream:
            pass
    gw.wait_for(lambda: gw.status("smollm2").ready == 0)
    got = client.completions.create(model="smollm2", prompt="Hello", max_tokens=3, temperature=0)
    assert got.usage is not None and got.usage.completion_tokens == 3
    assert gw.admin()["smollm2"]["cold_starts"] == 2


def test_scale_up_under_load_and_back_down(gateway_factory: Factory) -> None:
    gw = gateway_factory(
        [
            with_scaling(
                MINILM, target=1, **{"container-concurrency": 2, "max-scale": 3, "window": "6s"}
            )
        ]
    )
    assert embed(gw).status_code == 200
    stop = threading.Event()
    codes: list[int] = []

    def load() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                codes.append(
                    c.post(
                        f"{gw.url}/v1/embeddings", json={"model": "minilm", "input": "load " * 40}
                    ).status_code
                )

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        gw.wait_for(lambda: gw.status("minilm").in_flight + gw.status("minilm").queued >= 3)
        gw.run_for("minilm", 6)
        gw.wait_for(lambda: gw.status("minilm").ready >= 2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(codes) == {200}
    assert gw.status("minilm").desired >= 2
    gw.run_for("minilm", 60)  # no load: down by at most half per step, then zero
    gw.wait_for(lambda: gw.status("minilm").ready + gw.status("minilm").draining == 0)


def test_auth_limits_and_body_size(gateway_factory: Factory) -> None:
    gw = gateway_factory(
        [with_scaling(MINILM)],
        gateway={
            "auth": {
                "api_keys": [
                    {"name": "app", "key_env": "APP_KEY", "rate_per_s": 0.001, "burst": 2},
                    {"name": "other", "key": "other-secret", "models": ["smollm2"]},
                ],
                "admin_key": "admin-secret",
                "max_body_bytes": 2048,
            }
        },
        environ={"APP_KEY": "app-secret"},
    )
    ok = {"Authorization": "Bearer app-secret"}
    assert embed(gw).status_code == 401
    assert embed(gw, Authorization="Bearer wrong").status_code == 401
    assert embed(gw, Authorization="Bearer other-secret").status_code == 403
    r = httpx.post(
        f"{gw.url}/v1/embeddings", headers=ok, json={"model": "minilm", "input": "x" * 5000}
    )
    assert r.status_code == 413
    assert embed(gw, **ok).status_code == 200
    assert embed(gw, **ok).status_code == 200
    limited = embed(gw, **ok)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert httpx.get(f"{gw.url}/metrics", headers=ok).status_code == 403
    assert httpx.get(f"{gw.url}/metrics").status_code == 401
    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": "Bearer admin-secret"})
    assert metrics.status_code == 200
    assert (
        'edgeinfer_requests_total{model="minilm",route="/v1/embeddings",status="429"}'
        in metrics.text
    )
    assert 'edgeinfer_cold_start_seconds_count{model="minilm",phase="spawn"} 1.0' in metrics.text


def test_unknown_model_and_routes(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "gpt-9", "input": "x"})
    assert r.status_code == 404 and "gpt-9" in r.json()["error"]["message"]
    r = httpx.get(f"{gw.url}/v2/models/gpt-9/ready")
    assert r.status_code == 404 and "gpt-9" in r.json()["error"]
    assert httpx.post(f"{gw.url}/v1/embeddings", content=b"{oops").status_code == 400
    assert httpx.get(f"{gw.url}/v2/models/minilm/ready").json() == {"name": "minilm", "ready": True}
    for junk in ("/no/such/route", "/v1/models/junk1", "/v2/models/junk2/infer"):
        httpx.get(f"{gw.url}{junk}")
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert "junk" not in metrics and "gpt-9" not in metrics and "/no/such" not in metrics
    assert 'route="(unmatched)"' in metrics
    ids = [m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]]
    assert ids == ["minilm"]
    assert gw.status("minilm").ready == 0  # none of that started a replica


def test_a_route_for_another_task_is_refused_before_a_replica_starts(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    asks = [
        (
            "/v1/chat/completions",
            {"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/completions", {"model": "minilm", "prompt": "hi"}),
        ("/v1/responses", {"model": "minilm", "input": "hi"}),
        ("/api/chat", {"model": "minilm", "messages": []}),
        ("/api/generate", {"model": "minilm", "prompt": "hi"}),
    ]
    for path, body in asks:
        r = httpx.post(f"{gw.url}{path}", json=body, timeout=30)
        assert r.status_code == 400, (path, r.text)
        message = r.json()["error"]["message"] if path.startswith("/v1") else r.json()["error"]
        assert "embedding model" in message and path in message, (path, message)
    assert gw.status("minilm").ready == 0 and gw.status("minilm").starting == 0
    assert embed(gw).status_code == 200  # the route it serves still starts it


def replica_metric(gw: GatewayServer, model: str, name: str) -> float:
    url = gw.on_loop(lambda: gw.pool(model).replicas[0].url)
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_streams_pass_through_token_by_token(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(SMOLLM2)])
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    messages: Any = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=16, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=16, temperature=0, stream=True
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 8 and "".join(pieces) == whole.choices[0].message.content
    # The gateway asked the worker for usage to count tokens; the client did not ask.
    assert all(c.usage is None for c in chunks)
    # The gateway counts a stream's tokens once its last byte went out: the client
    # can ask for the metrics a moment before that bookkeeping ran.
    want = 'edgeinfer_tokens_total{kind="completion",model="smollm2"} 32.0'
    deadline = time.monotonic() + 10
    metrics = httpx.get(f"{gw.url}/metrics").text
    while want not in metrics and time.monotonic() < deadline:
        time.sleep(0.05)
        metrics = httpx.get(f"{gw.url}/metrics").text
    assert want in metrics
    assert "edgeinfer_time_to_first_token_seconds_count" in metrics


def test_client_disconnect_cancels_upstream(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(SMOLLM2)])
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3, 4, 5,",
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:
                break
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 0)
    # One llama context: this runs only after the cut generation let go of it.
    r = httpx.post(
        f"{gw.url}/v1/completions", json={**body, "max_tokens": 3, "stream": False}, timeout=60
    )
    assert r.status_code == 200, r.text
    generated = replica_metric(gw, "smollm2", "edgeinfer_worker_generated_tokens")
    assert generated < 300, f"the worker went on generating ({generated} tokens)"
    assert replica_metric(gw, "smollm2", "edgeinfer_worker_generations_cancelled_total") == 1


def test_no_request_is_lost_to_a_scale_down(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    assert embed(gw).status_code == 200
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                codes.append(
                    c.post(
                        f"{gw.url}/v1/embeddings", json={"model": "minilm", "input": "x"}
                    ).status_code
                )

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for _ in range(3):  # drain the only replica while requests keep coming
            gw.wait_for(lambda: gw.status("minilm").ready == 1)
            gw.on_loop(lambda: gw.pool("minilm").scale_down(1))
            gw.wait_for(lambda: gw.status("minilm").ready == 0)
        gw.wait_for(lambda: len(codes) > 3)  # a loaded machine may have sent only a few
    finally:
        stop.set()
        thread.join()
    assert len(codes) > 3 and set(codes) == {200}, codes
    assert gw.admin()["minilm"]["cold_starts"] >= 3


def test_a_model_served_from_an_endpoint(gateway_factory: Factory, tmp_path: Any) -> None:
    from tests.conftest import start_worker

    worker = start_worker("magika", tmp_path)
    try:
        gw = gateway_factory(
            [
                {
                    "name": "magika",
                    "task": "classify",
                    "endpoint": worker.url,
                    "options": {"preprocess": "magika"},
                }
            ]
        )
        body = {
            "inputs": [
                {
                    "name": "content",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["#!/bin/sh\necho hi\n"],
                }
            ]
        }
        r = httpx.post(f"{gw.url}/v2/models/magika/infer", json=body)
        assert r.status_code == 200
        assert r.json()["outputs"][0]["data"] == ["shell"]
        info = gw.admin()["magika"]
        assert info["runtime"] == "external" and info["cold_starts"] == 0
    finally:
        worker.stop_cleanly()


def test_a_replica_that_answers_too_late_is_504(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(SMOLLM2)])
    body = {"model": "smollm2", "prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0}
    assert httpx.post(f"{gw.url}/v1/completions", json=body, timeout=60).status_code == 200
    slow = {**body, "max_tokens": 800}  # several seconds of generation
    r = httpx.post(
        f"{gw.url}/v1/completions", json=slow, timeout=60, headers={"x-edgeinfer-timeout": "0.5"}
    )
    assert r.status_code == 504 and "did not answer within" in r.json()["error"]["message"]
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 0)
    # The gateway hung up on the replica, so the generation stopped long before 800.
    cancelled = "edgeinfer_worker_generations_cancelled_total"
    gw.wait_for(lambda: replica_metric(gw, "smollm2", cancelled) == 1)
    assert replica_metric(gw, "smollm2", "edgeinfer_worker_generated_tokens") < 400
    assert httpx.post(f"{gw.url}/v1/completions", json=body, timeout=60).status_code == 200


def test_workers_do_not_outlive_a_killed_gateway(tmp_path: Any) -> None:
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import ROOT, free_port

    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [with_scaling(MINILM)]}))
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "EDGEINFER_HOME": str(tmp_path / "home")},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        r = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": "x"}, timeout=60)
        assert r.status_code == 200
        models = {m["model"]: m for m in httpx.get(f"{url}/admin/models").json()["models"]}
        pid = models["minilm"]["instances"][0]["pid"]
        assert alive(pid)
    finally:
        gateway.kill()  # SIGKILL: no shutdown code runs in the gateway
        gateway.wait()
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its gateway"
        time.sleep(0.1)


def test_the_bundled_wasm_form_scales_from_zero_through_the_gateway(
    gateway_factory: Factory,
) -> None:
    """The bundled MiniLM's WASM form (our engine, in the WASM host) and its native form,
    both at zero, neither with ``options.threads``: the in-host replica starts from zero
    and answers what the native one answers (before: the core budget launched it with
    ``options.threads: 0`` and the host refused it, a 503 on every request)."""
    wasm = {
        **MINILM,
        "name": "minilm-wasm",
        "artifacts": {"wasm": "py://runtime.backends.wasm.bundled_packages:minilm_engine"},
        "runtimes": ["wasm"],
        "options": {"max_input_tokens": 256},
    }
    native = {**MINILM, "options": {"max_input_tokens": 256}}
    gw = gateway_factory([with_scaling(native), with_scaling(wasm)])
    answers = {}
    for name in ("minilm-wasm", "minilm"):
        r = httpx.post(
            f"{gw.url}/v1/embeddings",
            json={"model": name, "input": "the edge host"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        answers[name] = r.json()["data"][0]["embedding"]
    assert gw.admin()["minilm-wasm"]["cold_starts"] == 1
    assert len(answers["minilm-wasm"]) == 384
    assert (
        max(abs(a - b) for a, b in zip(answers["minilm-wasm"], answers["minilm"], strict=True))
        < 1e-3
    )
