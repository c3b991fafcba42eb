"""The gateway's upstream client against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.upstream import UpstreamPool, request_bytes
from runtime.errors import BadInput, ReplicaLost, UpstreamError
from tests.gateway.replicas import RawReplica


class Server:
    """A minimal HTTP/1.1 server: counts connections, answers each request in turn."""

    def __init__(self, *, close_after_each: bool = False, chunked: bool = False) -> None:
        self.connections = 0
        self.close_after_each = close_after_each
        self.chunked = chunked
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            if self.chunked:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for part in (b"data: 1\n\n", b"data: 2\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            if self.close_after_each:
                writer.close()
                return


async def read_all(pool: UpstreamPool, port: int, body: bytes) -> tuple[int, bytes]:
    response = await pool.request("127.0.0.1", port, "POST", "/x", [], body)
    data = b"".join([chunk async for chunk in response.chunks()])
    return response.status, data


async def settled(pool: UpstreamPool, port: int) -> None:
    """Until the idle connections to ``port`` are lost (the replica closed them, or the
    pool dropped them for bytes nobody asked for): a wait on the event each connection
    fires itself (``connection_lost``), not on time."""
    lost: list[asyncio.Event] = []
    for conn in pool._idle[("127.0.0.1", port)]:
        if conn.transport is None:
            continue  # lost already
        event, inner = asyncio.Event(), conn.connection_lost

        def connection_lost(exc: Exception | None, inner: Any = inner, event: Any = event) -> None:
            inner(exc)
            event.set()

        setattr(conn, "connection_lost", connection_lost)  # noqa: B010
        lost.append(event)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in lost)), 5)


def test_keep_alive_connections_are_reused() -> None:
    async def run() -> int:
        server = Server()
        srv = await server.start()
        pool = UpstreamPool()
        for i in range(3):
            assert await read_all(pool, server.port, b"ping%d" % i) == (200, b"ping%d" % i)
        pool.close()
        srv.close()
        return server.connections

    assert asyncio.run(run()) == 1


def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def run() -> int:
        server = Server(close_after_each=True)
        srv = await server.start()
        pool = UpstreamPool()
        for _ in range(3):
            assert await read_all(pool, server.port, b"x") == (200, b"x")
            await settled(pool, server.port)  # the close has arrived
        pool.close()
        srv.close()
        return server.connections

    assert asyncio.run(run()) == 3


def test_chunked_streams_arrive_in_pieces() -> None:
    async def run() -> list[bytes]:
        server = Server(chunked=True)
        srv = await server.start()
        pool = UpstreamPool()
        response = await pool.request("127.0.0.1", server.port, "POST", "/x", [], b"")
        assert response.header(b"content-type") == b"text/event-stream"
        chunks = [chunk async for chunk in response.chunks()]
        pool.close()
        srv.close()
        return chunks

    assert b"".join(asyncio.run(run())) == b"data: 1\n\ndata: 2\n\n"


def test_nothing_listening() -> None:
    async def run() -> None:
        with pytest.raises((UpstreamError, OSError)):
            await UpstreamPool().request("127.0.0.1", 9, "GET", "/", [], b"")

    asyncio.run(run())


def test_giving_up_before_the_answer_hangs_up_on_the_server() -> None:
    """A caller cancelled while the replica is still working closes the connection: the
    replica sees the hang-up (and stops generating) instead of working on for nobody."""

    async def run() -> bool:
        hung_up, arrived = asyncio.Event(), asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await reader.read()  # returns at EOF: the client hung up
            hung_up.set()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool()
        request = asyncio.ensure_future(pool.request("127.0.0.1", port, "POST", "/x", [], b""))
        await asyncio.wait_for(arrived.wait(), 5)  # the request is at the replica
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        try:
            await asyncio.wait_for(hung_up.wait(), 5)
            return True
        except TimeoutError:
            return False
        finally:
            pool.close()
            server.close()

    assert asyncio.run(run())


def test_the_host_header_names_the_port_only_when_it_is_not_80() -> None:
    knative = request_bytes("svc.ns.svc.cluster.local", 80, "GET", "/v2/health/ready", [], b"")
    assert b"\r\nhost: svc.ns.svc.cluster.local\r\n" in knative
    local = request_bytes("127.0.0.1", 8080, "POST", "/x", [(b"a", b"b")], b"hi")
    assert local == (
        b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:8080\r\na: b\r\ncontent-length: 2\r\n\r\nhi"
    )


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/x\r\nx-smuggled: 1", []),
        ("/x\n", []),
        ("/x\x00", []),
        ("/x", [(b"x-a", b"1\r\nx-smuggled: 1")]),
        ("/x", [(b"x-a\n", b"1")]),
        ("/x", [(b"x-a", b"\x00")]),
    ],
)
def test_request_bytes_refuses_cr_lf_and_nul(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(BadInput, match="CR, LF or NUL"):
        request_bytes("127.0.0.1", 8080, "POST", target, headers, b"")


async def serve(handler: Any) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


def test_a_post_is_not_sent_again_once_its_bytes_went_out() -> None:
    """The replica took the request on a reused connection, then closed it without an
    answer: it may have run it, so it is not run again on a fresh connection."""

    async def run() -> int:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            seen.append(await read_request(reader))
            writer.close()  # took the second one, answered nothing

        server, port = await serve(handler)
        pool = UpstreamPool()
        assert await read_all(pool, port, b"first") == (200, b"ok")
        with pytest.raises(UpstreamError) as caught:
            await pool.request("127.0.0.1", port, "POST", "/x", [], b"second")
        assert not isinstance(caught.value, ReplicaLost)  # nobody may send it elsewhere
        pool.close()
        server.close()
        return len(seen)

    assert asyncio.run(asyncio.wait_for(run(), 60)) == 2


def test_a_request_without_side_effects_is_sent_again_after_a_reset_before_its_answer() -> None:
    """The replica died while the connection sat idle (it took the bytes, then the
    connection was reset, no byte of an answer came): an inference call (``replay``)
    is sent once more on a fresh connection, and answered there."""

    async def run() -> tuple[int, bytes, int]:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            if len(seen) == 1:  # the first connection: take the next request, then reset
                seen.append(await read_request(reader))
                writer.transport.abort()
                return
            writer.close()

        server, port = await serve(handler)
        pool = UpstreamPool()
        assert await read_all(pool, port, b"first") == (200, b"ok")
        response = await pool.request("127.0.0.1", port, "POST", "/x", [], b"again", replay=True)
        data = b"".join([chunk async for chunk in response.chunks()])
        pool.close()
        server.close()
        return response.status, data, len(seen)

    status, data, requests = asyncio.run(asyncio.wait_for(run(), 60))
    assert (status, data) == (200, b"ok")
    assert requests == 3  # first, the one lost to the reset, and the same sent again


@pytest.mark.parametrize("later", [False, True], ids=["with the answer", "while idle"])
def test_a_connection_with_bytes_nobody_asked_for_is_not_reused(later: bool) -> None:
    """A second answer to one request (what a smuggled request produces) is never given
    to the next request on the connection: the connection is closed."""

    async def run() -> tuple[bytes, int]:
        connections = 0
        stray = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray"

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                body = await read_request(reader)
                answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                writer.write(answer if later else answer + stray)
                await writer.drain()
                if later:  # the stray answer comes while the connection is idle
                    await asyncio.sleep(0.05)
                    writer.write(stray)
                    await writer.drain()

        server, port = await serve(handler)
        pool = UpstreamPool()
        assert await read_all(pool, port, b"one") == (200, b"one")
        await settled(pool, port)  # the stray bytes have arrived and been refused
        _, second = await read_all(pool, port, b"two")
        pool.close()
        server.close()
        return second, connections

    assert asyncio.run(asyncio.wait_for(run(), 60)) == (b"two", 2)


def test_interim_answers_are_skipped() -> None:
    async def run() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
            await writer.drain()
            writer.write(b"HTTP/1.1 201 Created\r\nx-final: 1\r\ncontent-length: 4\r\n\r\ndone")
            await writer.drain()

        server, port = await serve(handler)
        pool = UpstreamPool()
        response = await pool.request("127.0.0.1", port, "POST", "/x", [], b"")
        body = b"".join([chunk async for chunk in response.chunks()])
        pool.close()
        server.close()
        return response.status, response.headers, body

    assert asyncio.run(asyncio.wait_for(run(), 60)) == (
        201,
        [(b"x-final", b"1"), (b"content-length", b"4")],
        b"done",
    )


def test_a_head_that_never_ends_fails_without_growing() -> None:
    """A header value that never ends is counted in raw bytes: the request fails once
    the head passes the limit, long before the replica stops sending."""

    async def run() -> int:
        sent = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
            try:
                for _ in range(64 * 1024):  # up to 64 MiB
                    writer.write(b"a" * 1024)
                    await writer.drain()
                    sent += 1024
            except ConnectionError:
                pass

        server, port = await serve(handler)
        pool = UpstreamPool()
        with pytest.raises(UpstreamError, match="head"):
            await pool.request("127.0.0.1", port, "GET", "/x", [], b"")
        pool.close()
        server.close()
        return sent

    assert asyncio.run(asyncio.wait_for(run(), 60)) < 32 * 1024 * 1024


def test_a_connection_whose_replica_closed_while_idle_is_not_written_to() -> None:
    """The replica (a server in its own thread) closed the idle connection, and this
    loop has not run since to see it: the pool must notice before writing a POST there,
    where it would be lost to a reset, and send it on a fresh connection."""

    async def close_after_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def run(port: int) -> tuple[int, bytes]:
        pool = UpstreamPool()
        assert await read_all(pool, port, b"first") == (200, b"ok")
        time.sleep(0.3)  # noqa: ASYNC251 (on purpose: the FIN arrives, unseen by the protocol)
        answer = await read_all(pool, port, b"second")
        pool.close()
        return answer

    with RawReplica(close_after_answer) as replica:
        assert asyncio.run(asyncio.wait_for(run(replica.port), 30)) == (200, b"ok")
        assert replica.requests == 2


@pytest.mark.parametrize(
    ("replay", "answered", "lost"),
    [(True, b"", True), (False, b"", False), (True, b"HTTP/1.1 200 OK\r\n", True)],
    ids=["inference call", "post with effects", "reset within the head"],
)
def test_a_fresh_connection_reset_before_the_answer_began(
    replay: bool, answered: bytes, lost: bool
) -> None:
    """The replica took the request on a fresh connection (nothing to replay on) and
    reset it before its answer's head was whole, as a worker killed in that instant
    does: a request safe to run twice says so (:class:`ReplicaLost`: its caller may
    send it to another replica once this one is dead); any other is an UpstreamError."""

    async def run() -> BaseException:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(answered)
            await writer.drain()
            writer.transport.abort()  # a reset, as a killed process's sockets get

        server, port = await serve(handler)
        pool = UpstreamPool()
        with pytest.raises(UpstreamError) as caught:
            await pool.request("127.0.0.1", port, "POST", "/x", [], b"once", replay=replay)
        pool.close()
        server.close()
        return caught.value

    error = asyncio.run(asyncio.wait_for(run(), 60))
    assert isinstance(error, ReplicaLost) is lost, error


def test_a_reset_after_the_head_is_not_a_lost_request() -> None:
    """Once the head is whole the answer has begun (the proxy passes it on at once): a
    reset in the body is an UpstreamError while reading it, never :class:`ReplicaLost`."""

    async def run() -> BaseException:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()

        server, port = await serve(handler)
        pool = UpstreamPool()
        response = await pool.request("127.0.0.1", port, "POST", "/x", [], b"x", replay=True)
        with pytest.raises(UpstreamError) as caught:
            async for _ in response.chunks():
                pass
        pool.close()
        server.close()
        return caught.value

    error = asyncio.run(asyncio.wait_for(run(), 60))
    assert not isinstance(error, ReplicaLost), error
