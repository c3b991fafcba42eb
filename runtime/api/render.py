"""Rendering errors in the shape of the API that was called.

``/v2/...`` gets OIP v2's ``{"error": "..."}``, ``/api/...`` Ollama's (the same
shape); everything else OpenAI's
``{"error": {"message", "type", "param", "code"}}``. Foreign exceptions become a 500
whose message names what failed, in the same shapes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from runtime.api import oip, ollama, openai
from runtime.errors import BadInput, EdgeInferError, HttpStatus, MethodNotAllowed, RuntimeFailure

__all__ = ["error_body", "error_response", "install_error_handlers", "json_response"]

log = logging.getLogger("edgeinfer.http")


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A compact JSON response (no spaces: every byte counts on the hot path)."""
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_body(path: str, exc: EdgeInferError) -> dict[str, Any]:
    """``exc`` in the error shape of the API ``path`` belongs to."""
    if path.startswith("/v2"):
        return oip.error_body(exc)
    if path.startswith("/api/"):
        return ollama.error_body(exc)
    return openai.error_body(exc)


def error_response(path: str, exc: EdgeInferError) -> Response:
    body = error_body(path, exc)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = exc.allow
    return json_response(body, exc.status, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on a FastAPI/Starlette app."""

    async def on_edgeinfer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EdgeInferError)
        return error_response(request.url.path, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(request.url.path, HttpStatus(exc.status_code, message))

    async def on_validation(request: Request, exc: Exception) -> Response:
        return error_response(request.url.path, BadInput(str(exc)))

    async def on_other(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        failure = RuntimeFailure(f"internal error while serving {request.url.path}: {exc!r}")
        return error_response(request.url.path, failure)

    add = app.add_exception_handler
    add(EdgeInferError, on_edgeinfer)
    add(HTTPException, on_http)
    add(RequestValidationError, on_validation)
    add(Exception, on_other)
