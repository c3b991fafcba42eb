"""The one way edgeinfer runs an ASGI app: uvicorn on uvloop with httptools."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn

__all__ = ["http_server"]


class _QuietServer(uvicorn.Server):
    """uvicorn, minus its 10 Hz housekeeping tick.

    uvicorn wakes every 100 ms to refresh its Date header and look for a shutdown
    request. A wake-up during a generation can preempt one of llama.cpp's threads,
    which spin-wait for each other, and stall a decode step (a 50 ms timer in the
    gateway measurably did). With no Date header to refresh, once a second is enough to
    notice SIGTERM.
    """

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # on_tick counts tenths of a second
            await asyncio.sleep(1.0)
            should_exit = await self.on_tick(counter)


def http_server(
    app: Any, *, host: str, port: int, log_level: str, graceful_seconds: float
) -> uvicorn.Server:
    """A uvicorn server with the event loop and parser edgeinfer is measured with, no
    access log (metrics count requests), and ``graceful_seconds`` for requests in
    flight to finish on SIGTERM."""
    return _QuietServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level=log_level,
            timeout_graceful_shutdown=int(graceful_seconds),
            # Loopback and in-cluster hops: no X-Forwarded-* rewriting, and no Server or
            # Date header to format on every response.
            proxy_headers=False,
            server_header=False,
            date_header=False,
        )
    )
