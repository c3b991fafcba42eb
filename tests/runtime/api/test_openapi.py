"""The OpenAPI documents: built from the wire types, naming only configured models,
and describing exactly the routes the worker has."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.routing import APIRoute

from runtime.api import openapi
from runtime.api.openai import ChatCompletionRequest
from runtime.worker import oip_routes, openai_routes


def _worker_document() -> dict[str, Any]:
    ops = [*openapi.openai_operations(False), *openapi.oip_operations(False)]
    return openapi.document("w", ["minilm"], ops)


def test_bodies_are_the_wire_types_with_the_served_model_names() -> None:
    doc = _worker_document()
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["properties"]["model"]["enum"] == ["minilm"]
    # Everything else is pydantic's own schema of the wire type.
    wire = ChatCompletionRequest.model_json_schema()["properties"]
    assert chat["properties"]["max_tokens"] == wire["max_tokens"]
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OIPError"
    )
    assert "security" not in infer


def test_secured_operations_say_so() -> None:
    doc = openapi.document("g", ["a"], openapi.openai_operations(True))
    assert doc["paths"]["/v1/embeddings"]["post"]["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_document_loads_in_schemathesis() -> None:
    doc = _worker_document()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]  # raises on an invalid one
    assert len(operations) == sum(len(methods) for methods in doc["paths"].values())


def test_the_worker_routes_are_the_documented_ones() -> None:
    routed = {
        (method.lower(), route.path)
        for router in (openai_routes.router, oip_routes.router)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    documented = {(m, p) for p, methods in _worker_document()["paths"].items() for m in methods}
    # The worker's server metadata route (/v2) is added by the worker's own document.
    assert routed - documented == {("get", "/v2")}
    assert documented <= routed
