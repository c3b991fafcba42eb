"""OpenAPI 3.1 documents of edgeinfer's HTTP contract, built from the wire types.

The request bodies are the JSON schemas pydantic derives from the models in
:mod:`runtime.api.openai` and :mod:`runtime.api.oip`, so the document cannot drift from
what the server validates. Errors are described in each API's shape: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under ``/v1`` and OIP v2's
``{"error": "..."}`` under ``/v2``.

A document names the models its server holds as the ``enum`` of every ``model`` field
and ``{name}`` path parameter: the names come from the server's configuration, never
from a client. Both the worker (one model) and the gateway (all configured models, plus
its operations routes) build theirs here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from runtime.api.oip import InferenceRequest
from runtime.api.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = [
    "VERSION_PATTERN",
    "Operation",
    "document",
    "oip_operations",
    "openai_operations",
]

_REF = "#/components/schemas/{model}"
_WIRE: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
)
_ERROR_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "OIPError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}
# What a model version in an OIP path may hold (KServe uses numbers; names are allowed).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


@dataclass(frozen=True)
class Operation:
    """One route: ``body`` names a wire type (its class name) sent as JSON;
    ``secured`` says the route takes ``Authorization: Bearer <key>``."""

    method: str
    path: str
    summary: str
    body: type[BaseModel] | None = None
    secured: bool = False
    media_type: str = "application/json"
    statuses: tuple[int, ...] = (200,)


def openai_operations(secured: bool) -> list[Operation]:
    """The OpenAI routes every server holds (DESIGN.md, "HTTP")."""
    return [
        Operation("get", "/v1/models", "List the models", secured=secured),
        Operation("get", "/v1/models/{name}", "Describe one model", secured=secured),
        Operation(
            "post",
            "/v1/chat/completions",
            "Chat; with stream=true, server-sent events of chat.completion.chunk",
            ChatCompletionRequest,
            secured,
        ),
        Operation(
            "post",
            "/v1/completions",
            "Complete a prompt (legacy); streams like chat",
            CompletionRequest,
            secured,
        ),
        Operation("post", "/v1/embeddings", "Embed texts", EmbeddingRequest, secured),
    ]


def oip_operations(secured: bool) -> list[Operation]:
    """The OIP v2 routes, with and without a model version in the path."""
    ops = [
        Operation("get", "/v2/health/live", "The server is live"),
        Operation("get", "/v2/health/ready", "The server is ready", statuses=(200, 503)),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        ops += [
            Operation("get", base, "Model metadata", secured=secured),
            Operation("get", base + "/ready", "Model readiness", secured=secured),
            Operation(
                "post",
                base + "/infer",
                "Inference (JSON tensors; the binary tensor extension is also accepted)",
                InferenceRequest,
                secured,
            ),
        ]
    return ops


def document(title: str, models: Sequence[str], operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` on a server that holds ``models``."""
    ops = list(operations)
    used = tuple(t for t in _WIRE if any(op.body is t for op in ops))
    _, defs = models_json_schema([(t, "validation") for t in used], ref_template=_REF)
    schemas: dict[str, Any] = {**defs.get("$defs", {}), **_ERROR_SCHEMAS}
    names = {"type": "string", "enum": list(models)} if models else {"type": "string"}
    for t in used:
        props = schemas[t.__name__].get("properties", {})
        if "model" in props:
            props["model"] = {**names, "description": "the name of a model this server holds"}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op, names)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if any(op.secured for op in ops):
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _operation(op: Operation, names: dict[str, Any]) -> dict[str, Any]:
    error = "#/components/schemas/" + ("OIPError" if op.path.startswith("/v2") else "OpenAIError")
    shape = {"application/json": {"schema": {"$ref": error}}}
    responses: dict[str, Any] = {
        str(s): {"description": "the answer", "content": {op.media_type: {}}} for s in op.statuses
    }
    responses["4XX"] = {"description": "a client mistake, saying what to fix", "content": shape}
    responses["5XX"] = {"description": "overload or a failure on the server", "content": shape}
    out: dict[str, Any] = {
        "operationId": f"{op.method}_{op.path}".replace("/", "_").strip("_"),
        "summary": op.summary,
        "responses": responses,
    }
    params = []
    if "{name}" in op.path:
        params.append({"name": "name", "in": "path", "required": True, "schema": names})
    if "{version}" in op.path:
        version = {"type": "string", "pattern": VERSION_PATTERN}
        params.append({"name": "version", "in": "path", "required": True, "schema": version})
    if params:
        out["parameters"] = params
    if op.body is not None:
        ref = {"$ref": "#/components/schemas/" + op.body.__name__}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    if op.secured:
        out["security"] = [{"bearer": []}]
    return out
