"""The gateway's proxy under attack, end to end: raw sockets to a real gateway (its own
HTTP/1.1 server) in front of a real uvicorn replica or a hand-written one."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import GatewayServer, make_gateway
from tests.gateway.replicas import (
    EchoReplica,
    RawReplica,
    raw_exchange,
    read_response,
    read_to_close,
)


def endpoint_model(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "task": "embedding", "endpoint": url}


class Served:
    """One gateway for the module (it takes seconds to start) in front of two
    replicas: ``echo`` (uvicorn) and ``raw`` (answers with ``raw.handler``)."""

    def __init__(self, gw: GatewayServer, echo: EchoReplica, raw: RawReplica) -> None:
        self.gw, self.echo, self.raw = gw, echo, raw


@pytest.fixture(scope="module")
def module_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with EchoReplica() as echo, RawReplica(_answer(b"")) as raw:
        gw = make_gateway(
            tmp_path_factory.mktemp("gw"),
            [endpoint_model("echo", echo.url), endpoint_model("raw", raw.url)],
        )
        try:
            yield Served(gw, echo, raw)
        finally:
            gw.stop()


@pytest.fixture
def served(module_served: Served) -> Served:
    module_served.echo.seen.clear()
    module_served.raw.requests = module_served.raw.written = 0
    return module_served


def infer(body: bytes, name: str = "echo", extra: bytes = b"") -> bytes:
    return (
        b"POST /v2/models/%s/infer HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"%scontent-length: %d\r\n\r\n%s" % (name.encode(), extra, len(body), body)
    )


def test_a_request_smuggled_in_the_path_never_reaches_a_replica(served: Served) -> None:
    """CR/LF percent-encoded in an OIP path would, decoded, end the request line the
    gateway writes upstream and start a second request on the pooled connection, whose
    answer the next client would get. 400, and the next client gets its own answer."""
    gw, replica = served.gw, served.echo
    smuggled = (
        b"/v2/models/echo/versions/1%0d%0aconnection:%20keep-alive%0d%0a"
        b"content-length:%200%0d%0a%0d%0aGET%20*"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as attacker:
        attacker.sendall(b"GET " + smuggled + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
        refused, why = read_response(attacker)
    for i in range(3):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
            client.sendall(infer(b'{"mine": %d}' % i))
            head, body = read_response(client)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert json.loads(body)["body"] == f'{{"mine": {i}}}', body  # not the smuggled one's
    assert refused.startswith(b"HTTP/1.1 400 "), refused
    assert "control character" in json.loads(why)["error"]
    assert [seen["path"] for seen in replica.seen] == ["/v2/models/echo/infer"] * 3


@pytest.mark.parametrize(
    "target",
    [
        b"/v2/models/echo/infer?x=%0a",
        b"/v2/models/echo/infer?x=%20y",
        b"/v2/models/echo%00/infer",
        b"/v2/models/echo/versions/1%09/infer",
        b"/v1/embeddings%0d%0a",
        b"/v2/models/echo/infer%7f",
    ],
)
def test_control_characters_in_a_target_are_400(served: Served, target: bytes) -> None:
    gw, replica = served.gw, served.echo
    request = infer(b"{}").replace(b"/v2/models/echo/infer", target, 1)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.sendall(request)
        head, body = read_response(client)
    assert head.startswith(b"HTTP/1.1 400 "), head
    error = json.loads(body)["error"]
    assert "control character" in (error if isinstance(error, str) else error["message"])
    assert replica.seen == []


def test_the_replica_gets_the_raw_still_encoded_path(served: Served) -> None:
    gw, replica = served.gw, served.echo
    r = httpx.post(f"{gw.url}/v2/models/ech%6F/versions/v1.2_a-b/infer?q=%41", content=b"{}")
    assert r.status_code == 200, r.text
    # uvicorn decodes what it was sent: the same path the gateway routed on.
    assert r.json()["path"] == "/v2/models/echo/versions/v1.2_a-b/infer"
    assert r.json()["query"] == "q=%41"
    # What a name or a version may not hold is not an OIP route at all.
    for bad in ("/v2/models/Echo/infer", "/v2/models/echo/versions/a:b/infer"):
        assert httpx.post(f"{gw.url}{bad}", content=b"{}").status_code == 404
    assert len(replica.seen) == 1


def test_head_and_wrong_methods_on_proxied_routes_are_405_at_once(
    served: Served,
) -> None:
    gw, replica = served.gw, served.echo
    for method, path, allow in [
        (b"HEAD", b"/v2/models/echo/infer", b"POST"),
        (b"GET", b"/v2/models/echo/versions/1/infer", b"POST"),
        (b"DELETE", b"/v2/models/echo", b"GET"),
        (b"GET", b"/v1/chat/completions", b"POST"),
        (b"HEAD", b"/v1/embeddings", b"POST"),
        (b"POST", b"/v2/models/echo/ready", b"GET, HEAD"),
    ]:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as client:
            client.sendall(method + b" " + path + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
            data = client.recv(65536)
        assert data.startswith(b"HTTP/1.1 405 "), (method, path, data)
        assert b"\r\nallow: " + allow.lower() + b"\r\n" in data.lower()
    assert replica.seen == []


def test_hop_by_hop_and_forwarding_headers_are_the_gateways(served: Served) -> None:
    gw = served.gw
    extra = (
        b"connection: keep-alive, x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\n"
        b"x-forwarded-for: 6.6.6.6\r\nx-forwarded-host: evil\r\nforwarded: for=6.6.6.6\r\n"
        b"x-kept: yes\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.sendall(infer(b"{}", extra=extra))
        _, body = read_response(client)
    headers = dict(json.loads(body)["headers"])
    assert headers["x-kept"] == "yes"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    for gone in ("x-hop", "keep-alive", "x-forwarded-host", "forwarded"):
        assert gone not in headers, gone


def _answer(data: bytes) -> Callable[..., Any]:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        writer.write(data)
        await writer.drain()

    return handler


def _cut(data: bytes) -> Callable[..., Any]:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


def test_an_interim_103_is_not_the_answer(served: Served) -> None:
    answer = (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n"
        b'{"ok": true}'
    )
    gw, replica = served.gw, served.raw
    replica.handler = _answer(answer)
    r = httpx.post(f"{gw.url}/v2/models/raw/infer", content=b"{}")
    assert r.status_code == 200 and r.content == b'{"ok": true}'
    assert "link" not in r.headers


def test_an_answer_cut_short_aborts_the_client_connection(served: Served) -> None:
    """A declared length the replica does not deliver: the client's connection is closed
    (the client sees the body is short), never left open to take the next answer as the
    rest of this body."""
    gw, replica = served.gw, served.raw
    cut = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    replica.handler = _cut(cut + b"x" * 70000)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.sendall(infer(b"{}", name="raw"))
        data = b""
        while data.count(b"x") < 70000 and (chunk := client.recv(65536)):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and b"content-length: 100000" in data
        try:  # a next request on the same connection gets no answer: it is closed
            client.sendall(infer(b"{}"))
            rest = read_to_close(client)
        except ConnectionError:
            rest = b""
    assert b"HTTP/1.1" not in rest, rest[:200]
    assert served.echo.seen == []


def test_a_chunked_answer_cut_short_has_no_final_chunk(served: Served) -> None:
    cut = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    gw, replica = served.gw, served.raw
    replica.handler = _cut(cut)
    data = raw_exchange(gw.port, infer(b"{}", name="raw"), timeout=10)
    assert data.startswith(b"HTTP/1.1 200 ") and b"hello" in data
    assert not data.endswith(b"0\r\n\r\n"), data


def test_a_stream_cut_short_ends_with_an_error_event_and_no_final_chunk(
    served: Served,
) -> None:
    cut = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
        b'f\r\ndata: {"a":1}\n\n\r\n'
    )
    gw, replica = served.gw, served.raw
    replica.handler = _cut(cut)
    data = raw_exchange(gw.port, infer(b"{}", name="raw"), timeout=10)
    assert data.startswith(b"HTTP/1.1 200 ")
    events = [line.strip() for line in data.split(b"\r\n") if line.startswith(b"data: ")]
    assert events[0] == b'data: {"a":1}'
    assert json.loads(events[-1][6:])["error"]["code"] == "replica_died"
    assert not data.endswith(b"0\r\n\r\n"), data


def test_a_stream_past_its_deadline_is_cut_with_an_error_event(served: Served) -> None:
    """The deadline passes after the answer began: an error event, then the connection
    is aborted (no final chunk): the client never takes a cut stream for a whole one."""
    gw, replica = served.gw, served.raw

    async def stalls(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b'transfer-encoding: chunked\r\n\r\nf\r\ndata: {"a":1}\n\n\r\n'
        )
        await writer.drain()
        await reader.read()  # until the gateway hangs up

    replica.handler = stalls
    request = infer(b"{}", name="raw", extra=b"x-edgeinfer-timeout: 0.3\r\n")
    data = raw_exchange(gw.port, request, timeout=20)
    assert data.startswith(b"HTTP/1.1 200 ")
    events = [line.strip() for line in data.split(b"\r\n") if line.startswith(b"data: ")]
    assert events[0] == b'data: {"a":1}'
    assert json.loads(events[-1][6:])["error"]["code"] == "deadline_exceeded"
    assert not data.endswith(b"0\r\n\r\n"), data


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(150)),
        b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * (70 * 1024) + b"\r\n",
    ],
    ids=["150 headers", "a 70 KiB header"],
)
def test_a_replica_head_over_the_limits_is_502(served: Served, head: bytes) -> None:
    gw, replica = served.gw, served.raw
    replica.handler = _answer(head + b"content-length: 2\r\n\r\nok")
    r = httpx.post(f"{gw.url}/v2/models/raw/infer", content=b"{}")
    assert r.status_code == 502, r.status_code
    assert "head" in r.json()["error"]


def test_a_slow_client_pauses_the_replica(served: Served) -> None:
    """A 150 MiB answer to a client that stops reading: the replica is held back (TCP
    pushes back through the gateway) instead of the gateway buffering it all."""
    total = 150 * 1024 * 1024
    piece = b"z" * (1024 * 1024)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()
            replica.written += len(piece)

    gw, replica = served.gw, served.raw
    replica.handler = big
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(infer(b"{}", name="raw"))
        first = client.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n" in first
        # Wait for the replica to stall: what it wrote stops growing.
        last, still = -1, 0
        while still < 5 and replica.written < total:
            time.sleep(0.2)
            still = still + 1 if replica.written == last else 0
            last = replica.written
        held = replica.written
        received = len(first.partition(b"\r\n\r\n")[2])
        received += len(read_at_most(client, total - received))
    # Kernel socket buffers on loopback hold some MiB; the gateway holds ~256 KiB.
    assert held < 48 * 1024 * 1024, f"the replica wrote {held >> 20} MiB ahead"
    assert received == total  # and the whole answer still arrives


def read_at_most(sock: socket.socket, total: int) -> bytes:
    """Read until ``total`` bytes have come, or the connection ends."""
    chunks, size = [], 0
    while size < total:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def test_a_stream_the_shutdown_cuts_ends_with_a_shutting_down_event(tmp_path: Any) -> None:
    """SIGTERM's grace period ends while a stream still runs: its last event says
    ``shutting_down``, and it counts as a 503."""
    begun = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
        b'f\r\ndata: {"a":1}\n\n\r\n'
    )

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(begun)
        await writer.drain()
        await reader.read()  # a stream that goes on until the gateway hangs up

    with RawReplica(hang) as replica:
        gw = make_gateway(tmp_path, [endpoint_model("raw", replica.url)])
        gw.server.graceful_seconds = 0.5
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(infer(b"{}", name="raw"))
            assert b'data: {"a":1}' in s.recv(65536)
            gw.stop()
            data = read_to_close(s)
    events = [line.strip() for line in data.split(b"\r\n") if line.startswith(b"data: ")]
    assert json.loads(events[-1][6:])["error"]["code"] == "shutting_down"
    assert not data.endswith(b"0\r\n\r\n"), data
    counted = gw.app.metrics.requests.labels("raw", "/v2/models/{name}/infer", "503")
    assert counted._value.get() == 1
