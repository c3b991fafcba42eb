"""The gateway app's own checks, over raw sockets to a real gateway with auth on, in
front of a real uvicorn replica: the key before the body, JSON that is refused, metric
labels only for configured models, and failed keys throttled per address."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import GatewayServer, make_gateway
from tests.gateway.replicas import EchoReplica, read_response

Factory = Callable[..., GatewayServer]
A = {"Authorization": "Bearer a-secret"}  # may use echo only
ADMIN = {"Authorization": "Bearer admin-secret"}
AUTH: dict[str, Any] = {
    "api_keys": [
        {"name": "a", "key": "a-secret", "models": ["echo"]},
        {"name": "b", "key": "b-secret", "models": ["other"]},
    ],
    "admin_key": "admin-secret",
    "failed_auth_burst": 1000,  # this module's own many 401s must not be throttled
}


def models(url: str) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "task": "embedding", "endpoint": url},
        {"name": "other", "task": "embedding", "endpoint": url},
    ]


@pytest.fixture(scope="module")
def module_served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayServer, EchoReplica]]:
    with EchoReplica() as echo:
        gw = make_gateway(tmp_path_factory.mktemp("gw"), models(echo.url), gateway={"auth": AUTH})
        try:
            yield gw, echo
        finally:
            gw.stop()


@pytest.fixture
def served(
    module_served: tuple[GatewayServer, EchoReplica],
) -> tuple[GatewayServer, EchoReplica]:
    module_served[1].seen.clear()
    return module_served


def first_answer(port: int, request: bytes) -> bytes:
    """What the gateway says first to a request whose body has not been sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [
        (b"/v2/models/echo/infer", b"", b"401"),
        (b"/v2/models/echo/infer", b"authorization: Bearer wrong\r\n", b"401"),
        (b"/v2/models/echo/infer", b"authorization: Bearer b-secret\r\n", b"403"),
        (b"/v1/chat/completions", b"", b"401"),
        (b"/v1/embeddings", b"authorization: Bearer wrong\r\n", b"401"),
    ],
)
def test_the_key_is_checked_before_the_body_is_read(
    served: tuple[GatewayServer, EchoReplica], path: bytes, key: bytes, status: bytes
) -> None:
    """A client that waits for ``100 Continue`` before sending its (large) body gets
    its 401/403 instead, and the gateway never reads a byte of the body."""
    gw, echo = served
    head = (
        b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n%s"
        b"expect: 100-continue\r\ncontent-length: 10000000\r\n\r\n" % (path, key)
    )
    answer = first_answer(gw.port, head)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
    assert b"100 Continue" not in answer
    # The body is never read, so the connection closes after the answer, and says so.
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert echo.seen == []


def post(gw: GatewayServer, body: bytes, path: str = "/v1/embeddings") -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", content=body, headers=A, timeout=30)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"model": "echo", "input": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper"),
        (b'{"model": "echo", "input": "x", "n": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"model": "echo", "input": "x"', "not valid JSON"),
        (b'{"model": "other", "model": "echo", "input": "x"}', "'model' is given twice"),
        (b'{"model": "other", "mod\\u0065l": "echo", "input": "x"}', "'model' is given twice"),
    ],
    ids=["deep array", "deep field", "5000 digits", "cut", "model twice", "model escaped"],
)
def test_json_the_parser_refuses_is_400_in_the_api_shape(
    served: tuple[GatewayServer, EchoReplica], body: bytes, says: str
) -> None:
    gw, echo = served
    r = post(gw, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"]
    assert echo.seen == []
    assert post(gw, b'{"model": "echo", "input": "x"}').status_code == 200  # still serving


def test_stream_options_that_are_not_an_object_are_400(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, echo = served
    for options in ('"yes"', "[1]", "3"):
        body = b'{"model": "echo", "prompt": "x", "stream": true, "stream_options": %b}'
        r = post(gw, body % options.encode(), "/v1/completions")
        assert r.status_code == 400, r.text
        assert "'stream_options'" in r.json()["error"]["message"]
    assert echo.seen == []


def test_made_up_model_names_never_become_metric_labels(
    served: tuple[GatewayServer, EchoReplica],
) -> None:
    gw, _ = served
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(100):
            assert client.post(f"/v2/models/made-up-{i}/infer", content=b"{}").status_code == 401
            assert client.get(f"/v2/models/made-up-{i}x/ready").status_code == 401
            body = {"model": f"made-up-{i}y", "input": "x"}
            assert client.post("/v1/embeddings", json=body, headers=A).status_code == 403
        metrics = client.get("/metrics", headers=ADMIN).text
    assert "made-up" not in metrics
    assert 'model="(unknown)"' in metrics


def test_failed_keys_are_throttled_per_address(gateway_factory: Factory) -> None:
    with EchoReplica() as echo:
        auth = {**AUTH, "failed_auth_burst": 3, "failed_auth_rate_per_s": 0.001}
        gw = gateway_factory(models(echo.url), gateway={"auth": auth})
        url = f"{gw.url}/v2/models/echo/infer"
        bad = {"Authorization": "Bearer guess"}
        assert [httpx.post(url, content=b"{}", headers=bad).status_code for _ in range(3)] == [
            401
        ] * 3
        refused = httpx.post(url, content=b"{}", headers=bad)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "failed" in refused.json()["error"] or "unknown key" in refused.json()["error"]
        assert echo.seen == []
        # A valid key from the same address still passes: a guesser behind the same
        # NAT locks nobody out.
        assert httpx.post(url, content=b"{}", headers=A).status_code == 200
        assert httpx.post(url, content=b"{}", headers=bad).status_code == 429


def test_a_good_request_still_passes(served: tuple[GatewayServer, EchoReplica]) -> None:
    gw, _ = served
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        body = b'{"inputs": []}'
        sock.sendall(
            b"POST /v2/models/echo/infer HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer a-secret"
            b"\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, answer = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    seen = json.loads(answer)
    assert seen["body"] == body.decode() and seen["path"] == "/v2/models/echo/infer"
    assert "authorization" not in dict(seen["headers"])  # the key stays at the gateway
