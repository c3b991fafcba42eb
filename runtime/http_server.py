"""The one way edgeinfer runs an ASGI app: uvicorn on uvloop with httptools."""

from __future__ import annotations

from typing import Any

import uvicorn

__all__ = ["http_server"]


def http_server(
    app: Any, *, host: str, port: int, log_level: str, graceful_seconds: float
) -> uvicorn.Server:
    """A uvicorn server with the event loop and parser edgeinfer is measured with, no
    access log (metrics count requests), and ``graceful_seconds`` for requests in
    flight to finish on SIGTERM."""
    return uvicorn.Server(
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
