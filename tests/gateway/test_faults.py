"""Faults with real workers behind a real gateway (issue 19): a frozen worker, a
refused connection, a killed worker, streams cut by a deadline, a death or a client,
a model that cannot load, a prompt no context holds. Each test says what every
client received."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import upstream
from runtime.scaling.replica import free_port
from tests.gateway.conftest import MINILM, SMOLLM2, GatewayServer
from tests.gateway.served import ADMIN_KEY, API_KEY, bundled_models, start_gateway
from tests.gateway.test_gateway import alive, embed, with_scaling

pytestmark = pytest.mark.slow

Factory = Callable[..., GatewayServer]
USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def replica_pids(gw: GatewayServer, model: str) -> list[int]:
    return gw.on_loop(lambda: [r.process.pid for r in gw.pool(model).replicas])


def requests_metric(gw: GatewayServer, model: str, route: str, status: int) -> float:
    line = f'edgeinfer_requests_total{{model="{model}",route="{route}",status="{status}"}} '
    for row in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if row.startswith(line):
            return float(row.removeprefix(line))
    return 0.0


def test_a_frozen_worker_leaves_rotation_and_a_replacement_serves(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    assert embed(gw).status_code == 200
    [frozen] = replica_pids(gw, "minilm")
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Sent to the frozen worker before anyone knew, on the kept-alive connection of
        # the first request: the worker never read it, and its kill resets that
        # connection before a byte of an answer, so it is sent again and the
        # replacement answers it.
        first = embed(gw, "sent to the frozen one")
        assert first.status_code == 200, first.text
        gw.wait_for(lambda: frozen not in replica_pids(gw, "minilm"), timeout=30)
        assert not alive(frozen)  # killed, not left stopped
        with ThreadPoolExecutor(4) as ex:
            after = list(ex.map(lambda i: embed(gw, f"after {i}"), range(4)))
        assert [r.status_code for r in after] == [200] * 4
        [replacement] = replica_pids(gw, "minilm")
        assert replacement != frozen
        info = gw.admin()["minilm"]
        assert info["health"]["unhealthy"] == 1
        assert "liveness" in info["health"]["last_error"]
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGKILL)


def test_a_request_its_replica_refused_goes_to_another(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    assert embed(gw).status_code == 200
    [pid] = replica_pids(gw, "minilm")

    def stop_listening() -> None:  # the worker lives, its port refuses: as in a death
        gw.pool("minilm").replicas[0].port = free_port()

    gw.on_loop(stop_listening)
    answers = [embed(gw, f"refused {i}") for i in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200], answers[0].text
    assert pid not in replica_pids(gw, "minilm")
    gw.wait_for(lambda: not alive(pid))  # the unreachable one was killed


def test_requests_right_after_a_kill_are_all_answered(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM, **{"container-concurrency": 8})])
    assert embed(gw).status_code == 200
    [pid] = replica_pids(gw, "minilm")
    results: list[int] = []
    go = threading.Event()

    def client(i: int) -> None:
        go.wait()
        results.append(embed(gw, f"after the kill {i}").status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    os.kill(pid, signal.SIGKILL)
    go.set()
    for t in threads:
        t.join(120)
    assert results == [200] * 6


def test_a_worker_killed_as_its_connection_is_made_loses_no_request(
    gateway_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL in the instant the gateway's fresh connection to the worker is made (the
    kernel took it into the listening socket's backlog): the request is written, the
    dying worker resets it before a byte of an answer. Its replica is dead and the
    client has nothing, so the request goes to the replacement: a 200, not a 502."""
    gw = gateway_factory([with_scaling(MINILM)])
    assert embed(gw).status_code == 200
    [pid] = replica_pids(gw, "minilm")
    port = gw.pool("minilm").replicas[0].port
    gw.on_loop(gw.app.upstream.close)  # no kept-alive connection: the next one is fresh
    killed: list[int] = []
    made = upstream._Connection.connection_made

    def connection_made(conn: upstream._Connection, transport: Any) -> None:
        made(conn, transport)
        if conn.key[1] == port and not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    monkeypatch.setattr(upstream._Connection, "connection_made", connection_made)
    r = embed(gw, "sent as the worker died")
    assert killed == [pid]
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384
    [replacement] = replica_pids(gw, "minilm")
    assert replacement != pid
    assert requests_metric(gw, "minilm", "/v1/embeddings", 502) == 0


def sse_events(r: httpx.Response) -> list[str]:
    return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_abnormal_stream_ends_carry_their_code_and_count_their_status(
    gateway_factory: Factory,
) -> None:
    # Liveness is not what this test is about: a frozen worker stays in rotation.
    gw = gateway_factory([with_scaling(SMOLLM2)], gateway={"health": {"failure_threshold": 100}})
    body = {"model": "smollm2", "prompt": "1, 2, 3,", "temperature": 0, "stream": True}
    route = "/v1/completions"
    assert httpx.post(f"{gw.url}{route}", json={**body, "max_tokens": 2}, timeout=60)

    # A deadline mid-stream (the worker frozen after its first event, so the deadline
    # passes whatever the machine's speed): an error event with its code, no [DONE],
    # counted as 504.
    [pid] = replica_pids(gw, "smollm2")
    events: list[str] = []
    try:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(
                "POST",
                f"{gw.url}{route}",
                json={**body, "max_tokens": 900},
                headers={"x-edgeinfer-timeout": "20"},
                timeout=60,
            ) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 1:
                        os.kill(pid, signal.SIGSTOP)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(events) >= 2 and events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["code"] == "deadline_exceeded"
    gw.wait_for(lambda: gw.status("smollm2").in_flight == 0)
    assert requests_metric(gw, "smollm2", route, 504) == 1

    # The replica killed mid-stream: replica_died, counted as 502.
    events = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{gw.url}{route}", json={**body, "max_tokens": 900}, timeout=60) as r,
    ):
        for n, line in enumerate(r.iter_lines()):
            if n == 4:
                os.kill(replica_pids(gw, "smollm2")[0], signal.SIGKILL)
            if line.startswith("data: "):
                events.append(line[6:])
    assert json.loads(events[-1])["error"]["code"] == "replica_died"
    assert requests_metric(gw, "smollm2", route, 502) == 1

    # A client that hangs up mid-stream: 499, never "0" nor 200.
    with httpx.stream(
        "POST", f"{gw.url}{route}", json={**body, "max_tokens": 900}, timeout=60
    ) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 4:
                break
    gw.wait_for(lambda: requests_metric(gw, "smollm2", route, 499) == 1)
    assert requests_metric(gw, "smollm2", route, 0) == 0
    assert requests_metric(gw, "smollm2", route, 200) == 1  # only the first one


def test_a_model_that_cannot_load_backs_off_and_says_why(
    gateway_factory: Factory, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    spec = {**with_scaling(SMOLLM2), "name": "broken", "artifacts": {"gguf": str(broken)}}
    gw = gateway_factory([spec], gateway={"health": {"backoff_initial_seconds": 30}})

    def chat() -> httpx.Response:
        return httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )

    first = chat()
    assert first.status_code == 503, first.text
    started = time.monotonic()
    second = chat()  # inside the back-off: at once, naming the cause
    assert second.status_code == 503
    assert time.monotonic() - started < 10  # not a worker start: no process was spawned
    message = second.json()["error"]["message"]
    assert "failed to start 1 time(s) in a row" in message
    health = gw.admin()["broken"]["health"]
    assert health["failed_starts"] == 1 and health["backoff_seconds"] > 0
    assert "broken" in health["last_error"] or "load" in health["last_error"]


def test_a_prompt_no_context_holds_is_refused_before_tokenising(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory([with_scaling(SMOLLM2)])
    huge = "lorem ipsum " * 450_000  # 5.4 MB
    r = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": huge}]},
        timeout=120,
    )
    assert r.status_code == 400
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "characters" in error["message"]  # the cheap bound, not the tokeniser
    ok = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200


def test_a_killed_fork_server_does_not_stop_the_next_cold_start(gateway_factory: Factory) -> None:
    gw = gateway_factory([with_scaling(MINILM)])
    forkserver = gw.app.supervisor.launcher.spawner  # type: ignore[attr-defined]
    old = forkserver._server.pid
    os.kill(old, signal.SIGKILL)
    gw.wait_for(lambda: not alive(old))
    r = embed(gw)  # a cold start: a new fork server forks the worker
    assert r.status_code == 200, r.text
    assert forkserver._server.pid != old and alive(forkserver._server.pid)


def test_sigterm_finishes_the_stream_in_flight_refuses_new_ones_and_stops_workers(
    tmp_path: Path,
) -> None:
    # The worker is frozen while the gateway is told to stop, so the stream is still in
    # flight whatever the machine's speed; liveness must not take it out meanwhile.
    health = {"health": {"failure_threshold": 100}}
    gw = start_gateway(tmp_path, bundled_models("smollm2"), gateway=health)
    try:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Count from one to fifty."}],
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
        }
        events: list[str] = []
        with (
            contextlib.suppress(httpx.RemoteProtocolError),
            httpx.stream(
                "POST", f"{gw.url}/v1/chat/completions", json=body, headers=USER, timeout=120
            ) as r,
        ):
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 1:
                    admin = httpx.get(f"{gw.url}/admin/models", headers=ADMIN).json()
                    [worker] = [i["pid"] for m in admin["models"] for i in m["instances"]]
                    os.kill(worker, signal.SIGSTOP)
                    gw.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.5)
                    late = httpx.get(f"{gw.url}/v1/models", headers=USER, timeout=10)
                    os.kill(worker, signal.SIGCONT)
                    assert late.status_code == 503, late.text
                    assert "shutting down" in late.text
        # The stream in flight finished whole.
        assert events[-1] == "[DONE]", f"{events[-3:]}\n{gw.output()[-3000:]}"
        assert gw.proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while alive(worker):
            assert time.monotonic() < deadline, "the worker outlived the gateway"
            time.sleep(0.1)
    finally:
        gw.stop()


MAGIKA: dict[str, Any] = bundled_models("magika")[0]


def test_an_unwritable_home_fails_new_starts_clearly_and_loaded_models_serve_on(
    gateway_factory: Factory, tmp_path: Path
) -> None:
    # One thread each: both fit the core budget of a 2-core machine at once, so the
    # failed start of Magika does not take the cores of MiniLM's serving replica.
    one_thread = [
        {**with_scaling(m), "options": {**m.get("options", {}), "threads": 1}}
        for m in (MINILM, MAGIKA)
    ]
    gw = gateway_factory(one_thread)
    assert embed(gw).status_code == 200
    # The state folder's logs become unwritable (as root, permissions do not stop us: a
    # file where the folder was does, for every writer).
    logs = tmp_path / "state" / "logs"
    logs.rename(tmp_path / "state" / "logs-moved")
    logs.write_text("not a folder")
    infer = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    r = httpx.post(f"{gw.url}/v2/models/magika/infer", json=infer, timeout=120)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert "cannot write the worker's log" in error and "EDGEINFER_HOME" in error
    assert embed(gw, "still serving").status_code == 200
