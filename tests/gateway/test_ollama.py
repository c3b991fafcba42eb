"""Ollama's discovery routes on the gateway (``gateway/ollama.py``) and Ollama's model
names (``NAME:latest``) on its proxied routes: the real ``ollama`` client and raw
requests against a real gateway with keys, in front of a real uvicorn echo replica
(no model: it stands in for a replica's HTTP only) or, marked slow, real SmolLM2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.gateway.conftest import SMOLLM2, GatewayServer, make_gateway
from tests.gateway.replicas import EchoReplica

A = {"Authorization": "Bearer a-secret"}  # may use echo only
ALL = {"Authorization": "Bearer all-secret"}
AUTH: dict[str, Any] = {
    "api_keys": [
        {"name": "a", "key": "a-secret", "models": ["echo"]},
        {"name": "all", "key": "all-secret"},
    ],
    "admin_key": "admin-secret",
    "failed_auth_burst": 1000,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, EchoReplica]]:
    with EchoReplica() as echo:
        models = [
            {"name": "echo", "task": "embedding", "endpoint": echo.url},
            {"name": "other", "task": "chat", "endpoint": echo.url},
        ]
        gw = make_gateway(tmp_path_factory.mktemp("gw"), models, gateway={"auth": AUTH})
        try:
            yield gw, echo
        finally:
            gw.stop()


def client(gw: GatewayServer, headers: dict[str, str]) -> ollama.Client:
    return ollama.Client(host=gw.url, headers=headers)


def test_the_client_lists_only_the_models_its_key_may_use(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, _ = served
    assert [m.model for m in client(gw, ALL).list().models] == ["echo:latest", "other:latest"]
    listed = client(gw, A).list().models
    assert [m.model for m in listed] == ["echo:latest"]
    assert listed[0].details is not None and listed[0].modified_at is not None


def test_show_answers_for_a_name_with_or_without_latest(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, _ = served
    c = client(gw, ALL)
    assert c.show("other").capabilities == ["completion", "tools"]
    assert c.show("other:latest").capabilities == ["completion", "tools"]
    assert c.show("echo").capabilities == ["embedding"]


def test_show_of_another_tag_or_an_unknown_model_is_a_404_naming_it(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, _ = served
    for name in ("other:7b", "nosuch", "nosuch:latest"):
        with pytest.raises(ollama.ResponseError) as caught:
            client(gw, ALL).show(name)
        assert caught.value.status_code == 404 and name.split(":")[0] in caught.value.error


def test_show_outside_the_keys_scope_is_a_403(served: tuple[GatewayServer, EchoReplica]) -> None:
    gw, _ = served
    with pytest.raises(ollama.ResponseError) as caught:
        client(gw, A).show("other:latest")
    assert caught.value.status_code == 403 and "other" in caught.value.error


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/show")],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong"])
def test_every_discovery_route_needs_a_key(
    served: tuple[GatewayServer, EchoReplica], method: str, path: str, auth: str | None
) -> None:
    gw, _ = served
    headers = {"Authorization": auth} if auth else {}
    r = httpx.request(method, gw.url + path, headers=headers, json={"model": "echo"})
    assert r.status_code == 401, r.text
    assert isinstance(r.json()["error"], str)  # Ollama's error shape


def test_show_checks_the_key_before_reading_the_body(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, _ = served
    # Not JSON at all: a 401 says the body was never looked at.
    r = httpx.post(f"{gw.url}/api/show", content=b"{{{", headers={"Authorization": "Bearer x"})
    assert r.status_code == 401, r.text
    r = httpx.post(f"{gw.url}/api/show", content=b"{{{", headers=ALL)
    assert r.status_code == 400 and isinstance(r.json()["error"], str), r.text
    r = httpx.post(f"{gw.url}/api/show", json={"model": "echo", "extra": 1}, headers=ALL)
    assert r.status_code == 400 and "extra" in r.json()["error"], r.text


def test_discovery_routes_refuse_other_methods(served: tuple[GatewayServer, EchoReplica]) -> None:
    gw, _ = served
    r = httpx.post(f"{gw.url}/api/tags", headers=ALL)
    assert r.status_code == 405 and r.headers["allow"] == "GET", r.text
    r = httpx.get(f"{gw.url}/api/show", headers=ALL)
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text


def test_version_is_the_packages(served: tuple[GatewayServer, EchoReplica]) -> None:
    from importlib.metadata import version

    gw, _ = served
    r = httpx.get(f"{gw.url}/api/version", headers=A)
    assert r.status_code == 200 and r.json() == {"version": version("edgeinfer")}


def test_latest_routes_to_the_model_and_other_tags_are_404s(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, echo = served
    echo.seen.clear()
    r = httpx.post(f"{gw.url}/api/embed", json={"model": "echo:latest", "input": "x"}, headers=A)
    assert r.status_code == 200, r.text
    assert echo.seen[-1]["path"] == "/api/embed"
    # Scope is the model's, whatever the spelling: key a may not use other:latest.
    r = httpx.post(f"{gw.url}/api/chat", json={"model": "other:latest"}, headers=A)
    assert r.status_code == 403, r.text
    before = len(echo.seen)
    r = httpx.post(f"{gw.url}/api/embed", json={"model": "echo:v2", "input": "x"}, headers=A)
    assert r.status_code == 404 and "echo:v2" in r.json()["error"], r.text
    assert len(echo.seen) == before  # never forwarded
    # The alias is Ollama's: the OpenAI routes take names as they are.
    r = httpx.post(
        f"{gw.url}/v1/embeddings", json={"model": "echo:latest", "input": "x"}, headers=ALL
    )
    assert r.status_code == 404, r.text
    # A made-up tag never becomes a metric label.
    metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": "Bearer admin-secret"})
    assert "echo:v2" not in metrics.text and 'model="echo"' in metrics.text


@pytest.mark.slow
def test_the_ollama_client_against_smollm2_through_the_gateway(
    gateway_factory: Callable[..., GatewayServer],
) -> None:
    gw = gateway_factory([{**SMOLLM2, "scaling": {"initial-scale": 0}}])
    c = ollama.Client(host=gw.url)
    assert c.ps().models == []  # at zero: nothing runs
    (listed,) = c.list().models
    assert listed.model == "smollm2:latest" and listed.details is not None
    assert listed.details.format == "gguf"
    options = {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}
    messages = [{"role": "user", "content": "Name a colour."}]
    parts = list(c.chat(model=listed.model, messages=messages, options=options, stream=True))
    assert parts[-1].done and parts[-1].eval_count and parts[-1].prompt_eval_count
    (running,) = c.ps().models
    assert running.model == "smollm2:latest" and running.context_length == 1024
    said = c.generate(model="smollm2", prompt="Name a colour.", options=options)
    assert said.eval_count and said.prompt_eval_count
    # Both answers counted under the model's own name (the NDJSON stream's last line).
    text = httpx.get(f"{gw.url}/metrics").text
    completion = _sample(text, 'edgeinfer_tokens_total{kind="completion",model="smollm2"}')
    assert completion == parts[-1].eval_count + said.eval_count, text


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_show_body_is_ollamas_shape(served: tuple[GatewayServer, EchoReplica]) -> None:
    gw, _ = served
    r = httpx.post(f"{gw.url}/api/show", json={"name": "echo:latest"}, headers=ALL)
    body = r.json()
    assert r.status_code == 200, r.text
    assert set(body) >= {"modelfile", "parameters", "template", "details", "model_info"}
    assert json.dumps(body["details"]) and body["capabilities"] == ["embedding"]


def test_an_ollama_stream_is_forwarded_as_sent(served: tuple[GatewayServer, EchoReplica]) -> None:
    # The gateway asks OpenAI chat/completions streams for their usage event; Ollama's
    # streams end with their counts anyway, and their body is not rewritten.
    gw, echo = served
    sent = {"model": "other:latest", "messages": [], "stream": True}
    r = httpx.post(f"{gw.url}/api/chat", json=sent, headers=ALL)
    assert r.status_code == 200, r.text
    assert json.loads(echo.seen[-1]["body"]) == sent


def test_keep_alive_holds_the_pool_and_is_not_forwarded(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, echo = served
    pool = gw.app.supervisor.pool("other")
    for keep_alive, held in (("5m", 300.0), (90, 90.0), ("1h30m", 3600.0), (-1, 3600.0)):
        sent = {"model": "other", "messages": [], "stream": False, "keep_alive": keep_alive}
        r = httpx.post(f"{gw.url}/api/chat", json=sent, headers=ALL)
        assert r.status_code == 200, r.text
        forwarded = json.loads(echo.seen[-1]["body"])
        assert "keep_alive" not in forwarded and forwarded["model"] == "other"
        # held for the asked time, at most max_keep_alive_seconds (3600 by default)
        assert pool.hold_until == pytest.approx(gw.clock() + held), keep_alive


@pytest.mark.parametrize("keep_alive", [0, "0s", "soon", True, None, "5 minutes"])
def test_keep_alive_that_is_not_a_hold_is_a_400_naming_it(
    served: tuple[GatewayServer, EchoReplica], keep_alive: object
) -> None:
    gw, echo = served
    before = len(echo.seen)
    sent = {"model": "other", "prompt": "x", "keep_alive": keep_alive}
    r = httpx.post(f"{gw.url}/api/generate", json=sent, headers=ALL)
    assert r.status_code == 400 and "keep_alive" in r.json()["error"], r.text
    assert len(echo.seen) == before
