"""``GET /openapi.json`` on the gateway: its own routes, its configured models only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.openapi import gateway_document
from runtime.spec.model import load_config
from tests.gateway.conftest import GatewayServer

Factory = Callable[..., GatewayServer]
MODEL = {
    "name": "magika",
    "task": "classify",
    "endpoint": "http://127.0.0.1:9",  # never called here
    "options": {"preprocess": "magika"},
}
AUTH = {"auth": {"api_keys": [{"name": "u", "key": "sk-user"}], "admin_key": "sk-admin"}}


def test_the_gateway_describes_its_routes(gateway_factory: Factory) -> None:
    gw = gateway_factory([MODEL], gateway=AUTH)
    r = httpx.get(f"{gw.url}/openapi.json")  # no key: the document is public
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    paths = doc["paths"]
    assert {"/v1/chat/completions", "/v2/models/{name}/infer", "/admin/models", "/metrics"} <= set(
        paths
    )
    assert "/v2" not in paths  # the worker's server metadata is not a gateway route
    name = paths["/v2/models/{name}/ready"]["get"]["parameters"][0]["schema"]
    assert name["enum"] == ["magika"]
    assert paths["/v1/embeddings"]["post"]["security"] == [{"bearer": []}]
    # Every parameterless GET it documents answers with a status it documents.
    admin = ("/metrics", "/admin/models", "/admin/usage", "/admin/state")
    keys = dict.fromkeys(admin, "sk-admin")
    for route, methods in paths.items():
        if "{" in route or "get" not in methods:
            continue
        headers = {"Authorization": f"Bearer {keys.get(route, 'sk-user')}"}
        r = httpx.get(gw.url + route, headers=headers)
        assert str(r.status_code) in methods["get"]["responses"], (route, r.status_code)


def test_without_keys_nothing_is_marked_secured_but_the_admin_routes(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory([MODEL])
    doc = httpx.get(f"{gw.url}/openapi.json").json()
    secured = {p for p, ms in doc["paths"].items() for m in ms.values() if "security" in m}
    assert secured == {"/metrics", "/admin/models", "/admin/usage", "/admin/state"}


def test_aliases_are_listed_wherever_the_models_are(tmp_path: Path) -> None:
    second = {**MODEL, "name": "magika-b"}
    alias = {
        "name": "filetype",
        "targets": [{"model": "magika", "weight": 9}, {"model": "magika-b", "weight": 1}],
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [MODEL, second], "aliases": [alias]}))
    doc = gateway_document(load_config(path), secured=False)
    enums = [
        p["schema"]["enum"]
        for methods in doc["paths"].values()
        for op in methods.values()
        for p in op.get("parameters", [])
        if p.get("name") == "name"
    ]
    assert enums and all(e == ["magika", "magika-b", "filetype"] for e in enums)
    body_enums = [
        s["properties"]["model"]["enum"]
        for s in doc["components"]["schemas"].values()
        if "enum" in s.get("properties", {}).get("model", {})
    ]
    assert body_enums and all(e == ["magika", "magika-b", "filetype"] for e in body_enums)
