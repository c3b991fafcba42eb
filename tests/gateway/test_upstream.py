"""The gateway's upstream client against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream import UpstreamError, UpstreamPool, request_bytes


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
            await asyncio.sleep(0.01)  # let the close arrive
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
        hung_up = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # returns at EOF: the client hung up
            hung_up.set()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool()
        request = asyncio.ensure_future(pool.request("127.0.0.1", port, "POST", "/x", [], b""))
        await asyncio.sleep(0.1)
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
