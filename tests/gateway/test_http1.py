"""The gateway's HTTP/1.1 server, against raw sockets and a real HTTP client.

The app under it is a small ASGI echo app written here; what is tested is the server:
framing, keep-alive, pipelining, back-pressure, disconnects, errors and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvloop

from gateway.config import ServerConfig
from gateway.http1 import Http1Server
from runtime.errors import ResponseCut
from tests.conftest import free_port


class EchoApp:
    """Echoes method, path, raw path, query, headers and body as JSON. ``/stream`` sends
    three chunks; ``/slow`` waits 0.3 s; ``/fail`` raises; ``/hang`` waits for a
    disconnect; ``/deny`` answers 401 without reading the body; ``/short`` and
    ``/long`` send fewer or more bytes than their Content-Length; ``/cut-chunked`` and
    ``/cut-sized`` raise after their answer began; ``/cut-head`` raises a ResponseCut
    after its head, before a byte of its body."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.disconnected = threading.Event()
        self.slow_started = threading.Event()
        self.hang_started = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        if path == "/deny":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no key"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path in ("/short", "/long", "/cut-sized"):
            length = {"/short": b"10", "/long": b"3", "/cut-sized": b"100"}[path]
            headers = [(b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})
            if path == "/cut-sized":
                raise RuntimeError("upstream cut")
            await send(
                {"type": "http.response.body", "body": b"67890"[: 0 if path == "/short" else 5]}
            )
            return
        if path == "/cut-chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            raise RuntimeError("upstream cut")
        if path == "/fail":
            raise RuntimeError("boom")
        if path.startswith("/v1/cut-head"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise ResponseCut("the replica stopped mid-answer: reset")
        if path == "/hang":
            self.hang_started.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        if path == "/slow":
            self.slow_started.set()
            await asyncio.sleep(0.3)
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                part = b"part%d;" % i
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = json.dumps(
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query": scope["query_string"].decode(),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": body.decode("latin-1"),
                "size": len(body),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class Running:
    def __init__(self, app: EchoApp, limits: ServerConfig | None = None) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Http1Server(
            app, host="127.0.0.1", port=self.port, graceful_seconds=5, limits=limits
        )
        self.thread = threading.Thread(
            target=lambda: uvloop.run(self.server.serve(install_signals=False)), daemon=True
        )

    def raw(self, data: bytes, *, read_until_close: bool = True, timeout: float = 5) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                out += chunk
                if not read_until_close and b"\r\n\r\n" in out:
                    break
            return out


@contextlib.contextmanager
def serving(limits: ServerConfig | None = None) -> Iterator[Running]:
    """An EchoApp on the server (with ``limits``), in a thread, until the block ends."""
    running = Running(EchoApp(), limits)
    running.thread.start()
    deadline = time.monotonic() + 10
    while not running.server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield running
    finally:
        running.server.request_exit()
        running.thread.join(10)


@pytest.fixture
def served() -> Iterator[Running]:
    with serving() as running:
        yield running


def test_a_request_reaches_the_app_and_the_answer_comes_back(served: Running) -> None:
    r = httpx.post(f"{served.url}/a%20b/c?x=1&y=2", content=b"hello", headers={"X-Key": "v"})
    assert r.status_code == 200
    echo = r.json()
    assert echo["path"] == "/a b/c" and echo["query"] == "x=1&y=2"
    assert echo["raw_path"] == "/a%20b/c"  # as sent: what a proxy forwards
    assert echo["body"] == "hello" and echo["headers"]["x-key"] == "v"
    assert r.headers["content-length"] == str(len(r.content))


def test_keep_alive_serves_many_requests_on_one_connection(served: Running) -> None:
    with httpx.Client(base_url=served.url) as client:
        ports = set()
        for i in range(20):
            r = client.post("/n", content=str(i).encode(), extensions={})
            assert r.json()["body"] == str(i)
            stream = r.extensions["network_stream"]
            ports.add(stream.get_extra_info("socket").getsockname()[1])
        assert len(ports) == 1


def test_pipelined_requests_are_answered_in_order(served: Running) -> None:
    requests = b"".join(
        b"POST /%s HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n%d" % (p, i)
        for i, p in enumerate([b"slow", b"fast", b"slow", b"fast"])
    )
    out = served.raw(requests + b"GET /end HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in out.split(b"HTTP/1.1 ")[1:]]
    assert [b["path"] for b in bodies] == ["/slow", "/fast", "/slow", "/fast", "/end"]
    assert [b["body"] for b in bodies[:4]] == ["0", "1", "2", "3"]


def test_a_chunked_request_body_is_decoded(served: Running) -> None:
    def parts() -> Iterator[bytes]:
        yield b"abc"
        yield b"defg"

    r = httpx.post(f"{served.url}/c", content=parts())
    assert r.json()["body"] == "abcdefg"


def test_a_large_body_passes_through_with_back_pressure(served: Running) -> None:
    big = bytes(range(256)) * (8 * 1024)  # 2 MiB, well over the read buffer limit
    r = httpx.post(f"{served.url}/big", content=big, timeout=30)
    assert r.json()["size"] == len(big)


def test_expect_100_continue_gets_an_interim_answer(served: Running) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(
            b"POST /e HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
        )
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"ok")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'"body": "ok"' in answer


def test_a_streamed_answer_is_chunked_and_http10_gets_it_until_close(served: Running) -> None:
    with httpx.Client() as client, client.stream("GET", f"{served.url}/stream") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert b"".join(r.iter_raw()) == b"part0;part1;part2;"
    out = served.raw(b"GET /stream HTTP/1.0\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"chunked" not in head and b"connection: close" in head
    assert body == b"part0;part1;part2;"


def test_head_gets_headers_without_a_body(served: Running) -> None:
    out = served.raw(b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    assert b"content-length: 0" not in head  # the length of a GET's body is not known


def test_malformed_requests_get_400_and_the_server_keeps_serving(served: Running) -> None:
    out = served.raw(b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and b"malformed HTTP request" in out
    upgrade = b"upgrade: websocket\r\nconnection: upgrade\r\n"
    out = served.raw(b"GET / HTTP/1.1\r\nhost: x\r\n" + upgrade + b"\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"upgrades are not supported" in out
    assert httpx.get(f"{served.url}/after").status_code == 200


def test_an_oversized_head_gets_431(served: Running) -> None:
    huge = b"x-big: " + b"a" * (70 * 1024) + b"\r\n"
    out = served.raw(b"GET / HTTP/1.1\r\nhost: x\r\n" + huge + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    assert httpx.get(f"{served.url}/after").status_code == 200


def test_an_app_error_is_a_500_and_the_next_request_is_served(served: Running) -> None:
    r = httpx.get(f"{served.url}/fail")
    assert r.status_code == 500
    assert httpx.get(f"{served.url}/after").status_code == 200


def test_an_answer_cut_before_a_byte_went_out_is_its_error_not_a_500(served: Running) -> None:
    """A replica that died after its head and before its body: the client gets the
    gateway's 502 with the reason, in the API's shape, not a bare 500."""
    r = httpx.post(f"{served.url}/v1/cut-head")
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "the replica stopped mid-answer: reset"
    assert httpx.get(f"{served.url}/after").status_code == 200


def test_a_client_that_hangs_up_is_seen_by_the_app(served: Running) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as s:
        s.sendall(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        assert served.app.hang_started.wait(5)  # the request is in the app: now hang up
    assert served.app.disconnected.wait(5)


def test_shutdown_finishes_requests_in_flight_and_runs_the_lifespan(served: Running) -> None:
    result: dict[str, Any] = {}

    def slow() -> None:
        result["r"] = httpx.post(f"{served.url}/slow", content=b"x", timeout=10)

    t = threading.Thread(target=slow)
    t.start()
    assert served.app.slow_started.wait(5)  # the request is in the app now
    served.server.request_exit()
    t.join(10)
    served.thread.join(10)
    assert result["r"].status_code == 200
    assert result["r"].headers.get("connection") == "close"
    assert served.app.events == ["lifespan.startup", "lifespan.shutdown"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/gone")
