"""The gateway's OpenAPI document (``GET /openapi.json``): its own routes, not a worker's.

The OpenAI and OIP v2 routes come from :mod:`runtime.api.openapi` (built from the wire
types); the gateway adds its operations routes, which take the admin key. The ``model``
enums list the configured models and then the aliases (``aliases:``).
"""

from __future__ import annotations

from typing import Any

from runtime.api.openapi import Operation, document, oip_operations, openai_operations
from runtime.spec.model import ModelConfig

__all__ = ["gateway_document"]


def gateway_document(config: ModelConfig, secured: bool) -> dict[str, Any]:
    """The document for a gateway serving ``config``'s models; ``secured`` when keys are
    configured (the inference routes then take ``Authorization: Bearer <key>``)."""
    ops = [
        *openai_operations(secured),
        *oip_operations(secured),
        Operation(
            "get",
            "/metrics",
            "Prometheus metrics (admin key)",
            secured=True,
            media_type="text/plain",
        ),
        Operation(
            "get", "/admin/models", "Per model: runtime, replicas, queue (admin key)", secured=True
        ),
        Operation(
            "get",
            "/admin/usage",
            "Requests, errors and tokens by key and model (admin key; ?since=UNIX|ISO 8601)",
            secured=True,
            statuses=(200, 400),
        ),
        Operation(
            "get",
            "/admin/state",
            "What the dashboard shows: models and their history (admin key)",
            secured=True,
        ),
        Operation("get", "/openapi.json", "This document"),
    ]
    # A client names an alias wherever it names a model: both are in every enum.
    names = [*(m.name for m in config.models), *(a.name for a in config.aliases)]
    return document("edgeinfer gateway", names, ops)
