"""``GET /openapi.json`` on the gateway: its own routes, its configured models only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

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
