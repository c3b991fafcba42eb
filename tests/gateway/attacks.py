"""Hostile clients and a hostile replica, on raw sockets, for the hostile-input suite
(``tests/gateway/test_hostile.py``) and its longer run (``bench/hostile.py``).

Each attack talks to a gateway at ``(host, port)`` and returns an :class:`Outcome`:
the status the gateway answered, whether it closed the connection, or that it did
neither within the attack's wait. :class:`FakeReplica` is a fake: a raw-socket HTTP
server that misbehaves on purpose (1xx before the answer, huge answers), standing in
for a replica the gateway reaches through a model's ``endpoint``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.scaling.replica import free_port

__all__ = ["ATTACKS", "FakeReplica", "Outcome", "Target"]

HOST = "127.0.0.1"


@dataclass
class Outcome:
    """What the gateway did: ``status`` (None when no answer), ``closed`` (it hung up),
    ``timed_out`` (neither within the wait)."""

    status: int | None = None
    closed: bool = False
    timed_out: bool = False
    head: bytes = b""
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "timeout" if self.timed_out else "closed"


@dataclass(frozen=True)
class Target:
    port: int
    api_key: str
    admin_key: str
    host: str = HOST

    def auth(self) -> bytes:
        return b"Authorization: Bearer %s\r\n" % self.api_key.encode()


def connect(target: Target, timeout: float, source: str | None = None) -> socket.socket:
    """A connection to the gateway, from ``source`` (another loopback address) if given."""
    sock = socket.create_connection(
        (target.host, target.port), timeout=timeout, source_address=(source, 0) if source else None
    )
    sock.settimeout(timeout)
    return sock


def read_answer(sock: socket.socket, wait: float) -> Outcome:
    """Read one response (head, and a body with a Content-Length) or what ends it."""
    deadline = time.monotonic() + wait
    data = b""
    out = Outcome()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            out.timed_out = True
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            out.timed_out = True
            break
        except ConnectionError:
            out.closed = True
            break
        if not chunk:
            out.closed = True
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            status = _status(head)
            if status is not None and 100 <= status < 200:
                data = rest  # an interim answer: the final one follows
                continue
            length = _content_length(head)
            if _chunked(head):
                if rest.endswith(b"0\r\n\r\n"):
                    out.head, out.body = head, _dechunk(rest)
                    break
                continue
            if length is None or len(rest) >= length:
                out.head, out.body = head, rest[: length or 0] if length is not None else rest
                break
    if b"\r\n\r\n" in data and not out.head:
        out.head, _, out.body = data.partition(b"\r\n\r\n")
    if out.head:
        out.status = _status(out.head)
        out.timed_out = out.timed_out and out.status is None
    return out


def _status(head: bytes) -> int | None:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


def _chunked(head: bytes) -> bool:
    return any(
        line.lower().replace(b" ", b"") == b"transfer-encoding:chunked"
        for line in head.split(b"\r\n")[1:]
    )


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def exchange(target: Target, raw: bytes, wait: float = 5.0) -> Outcome:
    """Send ``raw`` and read one answer."""
    with connect(target, wait) as sock:
        try:
            sock.sendall(raw)
        except ConnectionError:
            return Outcome(closed=True)
        return read_answer(sock, wait)


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" % path.encode()
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


# --- the attacks ---------------------------------------------------------------------


def smuggled_crlf_path(t: Target, wait: float = 5.0) -> Outcome:
    """A percent-encoded CRLF in an OIP path carrying a second request (issue 12, 1)."""
    # No literal space (the request line stays well-formed) and no '/' (the route
    # pattern holds it): only decoding yields a header and an end of head upstream.
    path = "/v2/models/echo/versions/1%0d%0aContent-Length:%200%0d%0a%0d%0aGET%20%2a%20x/infer"
    return exchange(t, post(path, b'{"inputs": []}', t.auth()), wait)


def slowloris_head(t: Target, wait: float = 20.0) -> Outcome:
    """A head sent a few bytes a second, never finished (issue 12, 2)."""
    with connect(t, wait) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X-a: b\r\n")
            except (ConnectionError, TimeoutError):
                return Outcome(closed=True)
            out = read_answer(sock, 0.5)
            if not out.timed_out:
                return out
        return Outcome(timed_out=True)


def slow_body(t: Target, wait: float = 20.0) -> Outcome:
    """A body that trickles in, one byte a second (issue 12, 2)."""
    with connect(t, wait) as sock:
        body = b'{"inputs": []}' * 100
        sock.sendall(post("/v2/models/echo/infer", body, t.auth())[: -len(body)])
        deadline = time.monotonic() + wait
        for i in range(len(body)):
            if time.monotonic() > deadline:
                return Outcome(timed_out=True)
            try:
                sock.sendall(body[i : i + 1])
            except (ConnectionError, TimeoutError):
                return Outcome(closed=True)
            out = read_answer(sock, 1.0)
            if not out.timed_out:
                return out
        return read_answer(sock, 1.0)


def endless_header(t: Target, wait: float = 10.0, size: int = 1 << 20) -> Outcome:
    """One header value that never ends: ``size`` bytes without CRLF (issue 12, 4)."""
    with connect(t, wait) as sock:
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\nX-Long: ")
            block = b"a" * 65536
            for _ in range(size // len(block)):
                sock.sendall(block)
        except (ConnectionError, TimeoutError):
            return Outcome(closed=True)
        return read_answer(sock, wait)


def many_headers(t: Target, wait: float = 5.0, count: int = 10_000) -> Outcome:
    """``count`` tiny headers (issue 12, 4: cap ~100)."""
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(count))
    return exchange(t, b"GET /v2/health/live HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n", wait)


def unauthenticated_16mib(t: Target, wait: float = 5.0) -> Outcome:
    """A 16 MiB JSON body announced without a key: the 401 should come from the head
    alone, before one byte of body is sent (issue 12, 3)."""
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (16 * 1024 * 1024)
    )
    return exchange(t, head, wait)


def expect_continue_unauthenticated(t: Target, wait: float = 5.0) -> Outcome:
    """``Expect: 100-continue`` without a key: the answer is 401, never 100 (issue 12, 3)."""
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
    )
    with connect(t, wait) as sock:
        sock.sendall(head)
        try:
            first = sock.recv(65536)
        except TimeoutError:
            return Outcome(timed_out=True)
        if not first:
            return Outcome(closed=True)
        return Outcome(status=_status(first.partition(b"\r\n\r\n")[0]), head=first)


def deep_json(t: Target, wait: float = 5.0, depth: int = 100_000) -> Outcome:
    """Nested arrays 100k deep, with a key (issue 12, 3: a 400, not a 500)."""
    body = b'{"model": "echo", "input": ' + b"[" * depth + b"]" * depth + b"}"
    return exchange(t, post("/v1/embeddings", body, t.auth()), wait)


def huge_integer(t: Target, wait: float = 5.0) -> Outcome:
    """A 5000-digit integer, with a key (issue 12, 3: a 400, not a 500)."""
    body = b'{"model": "echo", "input": "x", "dimensions": ' + b"9" * 5000 + b"}"
    return exchange(t, post("/v1/embeddings", body, t.auth()), wait)


def made_up_models(t: Target, wait: float = 5.0, count: int = 5000) -> Outcome:
    """``count`` unauthenticated requests naming made-up models on one keep-alive
    connection, then a /metrics scrape: no made-up name may be a label (issue 12, 5).
    Sent from 127.0.0.3: past the failed-auth burst they are 429s (counted too), and
    that throttle must not fall on the other tests."""
    with connect(t, wait, source="127.0.0.3") as sock:
        for i in range(count):
            body = json.dumps({"model": f"made-up-{i}", "input": "x"}).encode()
            sock.sendall(post("/v1/embeddings", body))
            out = read_answer(sock, wait)
            if out.status is None:
                return out
    scrape = exchange(
        t,
        b"GET /metrics HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n\r\n"
        % t.admin_key.encode(),
        wait,
    )
    scrape.extra["leaked_labels"] = scrape.body.count(b"made-up-")
    scrape.extra["metrics_bytes"] = len(scrape.body)
    return scrape


def head_on_infer(t: Target, wait: float = 10.0) -> Outcome:
    """HEAD on a proxied OIP route (issue 12, 8): an answer, not a hang."""
    raw = b"HEAD /v2/models/echo/infer HTTP/1.1\r\nHost: gw\r\n" + t.auth() + b"\r\n"
    with connect(t, wait) as sock:
        sock.sendall(raw)
        try:
            first = sock.recv(65536)  # a HEAD answer has no body to wait for
        except TimeoutError:
            return Outcome(timed_out=True)
        if not first:
            return Outcome(closed=True)
        return Outcome(status=_status(first.partition(b"\r\n\r\n")[0]), head=first)


def early_hints(t: Target, wait: float = 5.0) -> Outcome:
    """The replica answers 103 before its 200 (issue 12, 7): the client gets the 200.
    (``read_answer`` skips interim answers, so a 103 forwarded as final shows as its
    body-less head followed by nothing: a timeout or a 103 status.)"""
    raw = post("/v2/models/early/infer", b'{"inputs": []}', t.auth())
    with connect(t, wait) as sock:
        sock.sendall(raw)
        try:
            first = sock.recv(65536)
        except TimeoutError:
            return Outcome(timed_out=True)
        if not first:
            return Outcome(closed=True)
        head, _, body = first.partition(b"\r\n\r\n")
        return Outcome(status=_status(head), head=head, body=body)


def trailer_key(t: Target, wait: float = 5.0) -> Outcome:
    """The key only in a chunked body's trailer (issue 12, 10): must not authenticate."""
    body = b'{"inputs": []}'
    raw = (
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nTrailer: Authorization\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
        + t.auth()
        + b"\r\n"
    )
    return exchange(t, raw, wait)


def duplicate_host(t: Target, wait: float = 5.0) -> Outcome:
    """Two Host headers (issue 12, 10: 400)."""
    return exchange(t, b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", wait)


def http09(t: Target, wait: float = 5.0) -> Outcome:
    """An HTTP/0.9 request line (issue 12, 10: 400)."""
    return exchange(t, b"GET /v2/health/live\r\n\r\n", wait)


def unauthorized_flood(t: Target, wait: float = 5.0, count: int = 300) -> Outcome:
    """``count`` requests with wrong keys from one address (issue 12, 10: 401s are
    rate-limited); the outcome is the last answer, ``extra`` counts each status. It
    comes from 127.0.0.2, so the throttle it earns does not fall on the other tests."""
    statuses: dict[str, int] = {}
    out = Outcome()
    with connect(t, wait, source="127.0.0.2") as sock:
        for i in range(count):
            raw = (
                b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer wrong-%d\r\n\r\n" % i
            )
            sock.sendall(raw)
            out = read_answer(sock, wait)
            statuses[out.label()] = statuses.get(out.label(), 0) + 1
            if out.status is None:
                break
    out.extra["statuses"] = statuses
    return out


def big_answer_read_slowly(t: Target, wait: float = 60.0) -> Outcome:
    """A 150 MiB answer from the replica, read at ~16 MiB/s (issue 12, 9); ``extra``
    has the bytes read. The gateway's RSS is measured by the caller during it."""
    raw = post("/v2/models/big/infer", b'{"inputs": []}', t.auth())
    got = 0
    status = None
    with connect(t, wait) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(raw)
        deadline = time.monotonic() + wait
        first = b""
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            if status is None:
                first += chunk
                if b"\r\n\r\n" in first:
                    head, _, rest = first.partition(b"\r\n\r\n")
                    status, got = _status(head), len(rest)
                continue
            got += len(chunk)
            if got >= FakeReplica.BIG:
                break
            time.sleep(0.004)
    return Outcome(status=status, timed_out=got < FakeReplica.BIG, extra={"bytes_read": got})


ATTACKS: dict[str, Callable[..., Outcome]] = {
    "smuggled_crlf_path": smuggled_crlf_path,
    "slowloris_head": slowloris_head,
    "slow_body": slow_body,
    "endless_header_value": endless_header,
    "10k_headers": many_headers,
    "16mib_unauthenticated_json": unauthenticated_16mib,
    "expect_continue_unauthenticated": expect_continue_unauthenticated,
    "deeply_nested_json": deep_json,
    "5000_digit_integer": huge_integer,
    "5000_made_up_models_then_metrics": made_up_models,
    "150mib_answer_read_slowly": big_answer_read_slowly,
    "head_on_infer": head_on_infer,
    "103_from_replica": early_hints,
    "trailer_carrying_key": trailer_key,
    "duplicate_host": duplicate_host,
    "http09": http09,
    "401_flood": unauthorized_flood,
}


class FakeReplica:
    """A fake replica (raw sockets, one thread per connection): answers every request
    ``{"outputs": []}``, except ``/v2/models/early/...`` (a 103 first) and
    ``/v2/models/big/...`` (a 150 MiB body). ``requests`` records each request line."""

    BIG = 150 * 1024 * 1024

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.requests: list[bytes] = []
        self._sock = socket.create_server((HOST, self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> FakeReplica:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.requests.append(line)
                length = _content_length(head) or 0
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf[length:]
                try:
                    self._answer(conn, line)
                except OSError:
                    return

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        ok = b'{"outputs": []}'
        if b"/models/early/" in line:
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        if b"/models/big/" in line:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
            conn.sendall(b"Content-Length: %d\r\n\r\n" % self.BIG)
            block = b"\0" * (1 << 20)
            for _ in range(self.BIG // len(block)):
                conn.sendall(block)
            return
        if line.startswith(b"HEAD "):  # the head a GET would get, and no body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(ok))
            return
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(ok), ok)
        )


def replica_models(replica: FakeReplica) -> list[dict[str, Any]]:
    """Models served by the fake replica through ``endpoint``."""
    return [
        {
            "name": name,
            "task": "classify",
            "endpoint": replica.url,
            "options": {"preprocess": "magika"},
        }
        for name in ("echo", "early", "big")
    ]


def stream_options_not_an_object(t: Target, wait: float = 5.0) -> Outcome:
    """``stream: true`` with ``stream_options`` a list (found reading the gateway's
    usage rewrite, which spreads it as a mapping): a 400, not a 500."""
    body = b'{"model": "echo", "prompt": "x", "stream": true, "stream_options": [1]}'
    return exchange(t, post("/v1/completions", body, t.auth()), wait)


def control_char_in_version(t: Target, wait: float = 5.0) -> Outcome:
    """``GET /v2/models/NAME/versions/%1F`` (found by schemathesis): the decoded control
    character reaches the replica's request line, whose plain-text 400 is relayed."""
    raw = b"GET /v2/models/echo/versions/%1F HTTP/1.1\r\nHost: gw\r\n" + t.auth() + b"\r\n"
    return exchange(t, raw, wait)
