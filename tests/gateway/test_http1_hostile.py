"""The gateway's HTTP/1.1 server against hostile clients, over raw sockets: smuggling
attempts in the request target, slow clients, too many connections, endless heads,
trailers, Host games, HTTP/0.9, and apps whose answers break off (issue 12).

Each test talks to a real server on loopback with the echo app of ``test_http1``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.config import ServerConfig
from tests.gateway.test_http1 import Running, serving


@pytest.fixture
def served() -> Iterator[Running]:
    with serving() as running:
        yield running


def exchange(port: int, data: bytes, *, timeout: float = 5) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes or ``timeout`` passes; the bytes
    read, and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s, timeout)


def read_all(s: socket.socket, timeout: float) -> tuple[bytes, bool]:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out, False
        if not chunk:
            return out, True
        out += chunk


def body_of(answer: bytes) -> dict[str, object]:
    result: dict[str, object] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return result


# -- 1. the request target -------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/v2/models/m/versions/1%0d%0aContent-Length:%200%0d%0a%0d%0aGET%20/admin/models",
        b"/a%00b",
        b"/a%1Fb",
        b"/a%7fb",
        b"/a%09b",
    ],
)
def test_a_percent_encoded_control_character_in_the_path_is_400(
    served: Running, target: bytes
) -> None:
    answer, closed = exchange(served.port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and closed
    assert b"percent-encoded control character" in answer
    assert httpx.get(f"{served.url}/after").status_code == 200


@pytest.mark.parametrize("target", [b"/a\x01b", b"/a\x7fb", b"/a b"])
def test_a_raw_control_character_or_space_in_the_target_is_400(
    served: Running, target: bytes
) -> None:
    answer, closed = exchange(served.port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and closed


def test_the_raw_path_stays_encoded_and_a_query_may_hold_escapes(served: Running) -> None:
    answer, _ = exchange(
        served.port, b"GET /m%2Fx%41?q=%0a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    echo = body_of(answer)
    assert echo["raw_path"] == "/m%2Fx%41" and echo["path"] == "/m/xA"
    assert echo["query"] == "q=%0a"


# -- 2. slow clients and too many of them ------------------------------------------------


def test_a_head_that_trickles_in_past_the_head_timeout_gets_408() -> None:
    with (
        serving(ServerConfig(head_timeout_seconds=0.5)) as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as s,
    ):
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        answer = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # a byte every 0.1 s: progress, but slow
            try:
                s.sendall(b"a")
                s.settimeout(0.1)
                answer += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        rest, closed = read_all(s, 2)
        answer += rest
        assert answer.startswith(b"HTTP/1.1 408") and b"request head did not arrive" in answer
        assert closed
        assert httpx.get(f"{served.url}/after").status_code == 200


def test_a_head_pipelined_behind_an_answered_request_still_times_out() -> None:
    with serving(ServerConfig(head_timeout_seconds=0.5)) as served:
        answered = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
        answer, closed = exchange(served.port, answered + b"GET /b HTTP/1.1\r\nx-slow: ")
        assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer
        assert closed


def test_a_body_that_stops_coming_gets_408_and_the_app_a_disconnect() -> None:
    with serving(ServerConfig(body_timeout_seconds=0.5)) as served:
        head = b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n"
        answer, closed = exchange(served.port, head + b"abc", timeout=5)
        # Either limit may fire first on a loaded machine (3 bytes in 0.5 s is also
        # below the rate floor); both say the body stopped.
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"no request body bytes" in answer or b"request body arrives slower" in answer
        assert closed and served.app.disconnected.wait(5)


def _trickle_body(port: int, every: float, seconds: float) -> tuple[bytes, bool]:
    """A POST whose 100 000-byte body comes one byte each ``every`` seconds, for at
    most ``seconds``; what the server answered, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        answer = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not answer:
            try:
                s.sendall(b"a")
                s.settimeout(every)
                answer += s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        if not answer:  # still open and unanswered while it trickled
            return b"", False
        rest, closed = read_all(s, 2)
        return answer + rest, closed


def test_a_body_that_trickles_in_below_the_floor_rate_gets_408() -> None:
    limits = ServerConfig(body_timeout_seconds=0.5, min_body_bytes_per_second=100)
    with serving(limits) as served:
        answer, closed = _trickle_body(served.port, every=0.05, seconds=5)  # ~20 bytes/s
        assert answer.startswith(b"HTTP/1.1 408") and b"slower than 100 bytes/s" in answer
        assert closed and served.app.disconnected.wait(5)
        assert httpx.get(f"{served.url}/after").status_code == 200


def test_without_a_floor_a_trickle_is_progress() -> None:
    limits = ServerConfig(body_timeout_seconds=0.5, min_body_bytes_per_second=0)
    with serving(limits) as served:
        answer, closed = _trickle_body(served.port, every=0.05, seconds=2)
        assert answer == b"" and not closed


def test_connections_past_the_cap_get_503_before_sending_anything() -> None:
    with (
        serving(ServerConfig(max_connections=2)) as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as first,
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as second,
    ):
        first.sendall(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        assert first.recv(65536).startswith(b"HTTP/1.1 200")  # held open, kept alive
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as third:
            refused, closed = read_all(third, 5)  # it sent nothing
        head = refused.split(b"\r\n\r\n", 1)[0].lower()
        assert refused.startswith(b"HTTP/1.1 503") and closed
        assert b"retry-after: 1" in head and b"connection: close" in head
        second.close()
        deadline = time.monotonic() + 5
        while len(served.server.connections) > 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert httpx.get(f"{served.url}/after").status_code == 200


# -- 4. heads: bytes and fields -----------------------------------------------------------


def test_an_endless_header_value_gets_431_while_it_is_still_arriving(served: Running) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: ")
        sent = 0
        while sent < 64 * 1024 * 1024 and not select.select([s], [], [], 0)[0]:
            try:
                s.sendall(b"a" * 16384)
            except OSError:  # stalled (the old server) or closed
                break
            sent += 16384
        answer, _ = read_all(s, 5)
    assert answer.startswith(b"HTTP/1.1 431") and b"larger than 65536 bytes" in answer
    assert sent < 8 * 1024 * 1024  # refused long before the 64 MiB were sent
    assert httpx.get(f"{served.url}/after").status_code == 200


def test_more_header_fields_than_the_cap_get_431(served: Running) -> None:
    def request(fields: int) -> bytes:  # host, connection, and ``fields`` more
        extra = b"".join(b"x-h%d: v\r\n" % i for i in range(fields))
        return b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + extra + b"\r\n"

    answer, _ = exchange(served.port, request(99))
    assert answer.startswith(b"HTTP/1.1 431") and b"more than 100 header fields" in answer
    ok, _ = exchange(served.port, request(98))
    assert ok.startswith(b"HTTP/1.1 200")


# -- 6. answers that break off -----------------------------------------------------------


def test_an_answer_short_of_its_content_length_closes_the_connection(served: Running) -> None:
    answer, closed = exchange(served.port, b"GET /short HTTP/1.1\r\nhost: x\r\n\r\n", timeout=3)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n12345")
    assert closed  # not left open for the next answer to be read as this one's rest


def test_an_answer_longer_than_its_content_length_is_cut_and_closed(served: Running) -> None:
    answer, closed = exchange(served.port, b"GET /long HTTP/1.1\r\nhost: x\r\n\r\n", timeout=3)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n123")
    assert closed


def test_an_app_that_fails_mid_answer_aborts_the_connection(served: Running) -> None:
    request = b"GET /cut-chunked HTTP/1.1\r\nhost: x\r\n\r\n"
    answer, closed = exchange(served.port, request, timeout=3)
    assert b"transfer-encoding: chunked" in answer and b"5\r\nfirst\r\n" in answer
    assert not answer.endswith(b"0\r\n\r\n") and closed  # no final chunk: the client sees the cut
    answer, closed = exchange(served.port, b"GET /cut-sized HTTP/1.1\r\nhost: x\r\n\r\n", timeout=3)
    assert answer.endswith(b"\r\n\r\n12345") and closed


# -- 10. trailers, Host, HTTP/0.9, Expect ---------------------------------------------------


def test_chunked_trailers_never_reach_the_headers(served: Running) -> None:
    request = (
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nauthorization: Bearer stolen\r\nx-api-key: stolen\r\n\r\n"
    )
    answer, _ = exchange(served.port, request)
    echo = body_of(answer)
    assert echo["body"] == "abc"
    assert echo["headers"] == {
        "host": "x",
        "transfer-encoding": "chunked",
        "connection": "close",
    }


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nx-a: b\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",  # two
        b"GET / HTTP/1.0\r\nhost: a\r\nHost: a\r\n\r\n",  # two, on 1.0 too
        b"GET /\r\n\r\n",  # HTTP/0.9
    ],
)
def test_host_games_and_http09_get_400(served: Running, request_bytes: bytes) -> None:
    answer, closed = exchange(served.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request") and closed


def test_http10_without_host_is_served(served: Running) -> None:
    answer, _ = exchange(served.port, b"GET /ten HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and body_of(answer)["path"] == "/ten"


def test_an_app_that_refuses_from_the_head_sends_no_100_continue(served: Running) -> None:
    head = b"POST /deny HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    answer, closed = exchange(served.port, head, timeout=3)
    assert answer.startswith(b"HTTP/1.1 401") and b"100 Continue" not in answer
    assert closed  # the body it did not read is never taken for the next request


def test_a_refused_upload_still_gets_its_answer(served: Running) -> None:
    body = b"x" * (4 * 1024 * 1024)
    head = b"POST /deny HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(head)
        with contextlib.suppress(OSError):  # the server may stop reading
            s.sendall(body)
        answer, closed = read_all(s, 5)  # not reset before the 401 was read
    assert answer.startswith(b"HTTP/1.1 401") and answer.endswith(b"no key") and closed
