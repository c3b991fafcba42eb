"""Ollama's discovery routes, answered by the gateway itself for every configured model:
``GET /api/tags`` (the models the key may use), ``GET /api/ps`` (those with a ready
replica now), ``POST /api/show`` (one model's details) and ``GET /api/version``.

Shapes follow Ollama's ``docs/api.md`` (the converters live with the wire types in
:mod:`runtime.api.ollama`, shared with the worker). ``/api/ps`` leaves out
``expires_at``: when a model goes back to zero is its autoscaler's decision, not a time
known in advance. Model names follow Ollama's: ``NAME:latest`` is ``NAME``, any other
tag is a 404 that names it (:func:`runtime.api.ollama.model_name`), for these routes and
for the proxied ``/api/chat``, ``/api/generate`` and ``/api/embed`` alike.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.auth import KeyIdentity
from runtime.api import ollama
from runtime.api.body import parse_json
from runtime.errors import ModelNotFound
from runtime.scaling.source import ReplicaSource
from runtime.spec.model import ModelConfig, ModelSpec

__all__ = [
    "LISTINGS",
    "OLLAMA_PROXY",
    "SHOW",
    "listing",
    "proxied_model",
    "show",
    "show_target",
    "usable",
]

SHOW = "/api/show"
LISTINGS = frozenset({"/api/tags", "/api/ps", "/api/version"})
# Routes whose body's ``model`` is an Ollama name (tag allowed).
OLLAMA_PROXY = frozenset({"/api/chat", "/api/generate", "/api/embed"})


def proxied_model(path: str, name: str) -> str:
    """The configured model a proxied request's ``model`` field names: Ollama's routes
    take ``NAME:latest`` for ``NAME`` (404 for another tag); the others take names as
    they are."""
    return ollama.model_name(name) if path in OLLAMA_PROXY else name


def usable(config: ModelConfig, identity: KeyIdentity) -> list[ModelSpec]:
    """The configured models ``identity``'s key may use, in the config's order."""
    return [m for m in config.models if identity.models is None or m.name in identity.models]


def listing(
    path: str, config: ModelConfig, source: ReplicaSource, identity: KeyIdentity
) -> dict[str, Any]:
    """The answer of one of :data:`LISTINGS`."""
    if path == "/api/version":
        return {"version": _version()}
    models = usable(config, identity)
    if path == "/api/tags":
        return {"models": [ollama.list_entry(m) for m in models]}
    running = [m for m in models if source.pool(m.name).status().ready > 0]
    return {
        "models": [
            {
                **ollama.list_entry(m),
                "size_vram": 0,
                "context_length": m.options.context_length,
            }
            for m in running
        ]
    }


def show_target(body: bytes) -> str:
    """The configured model name a ``POST /api/show`` body asks about (400 for a bad
    body, 404 for a tag other than ``latest``)."""
    return ollama.model_name(parse_json(body, ollama.OllamaShowRequest).target)


def show(config: ModelConfig, name: str) -> dict[str, Any]:
    """``POST /api/show``'s answer for the model ``name`` (404 when not configured)."""
    spec = next((m for m in config.models if m.name == name), None)
    if spec is None:
        raise ModelNotFound(f"model {name!r} not found")
    return ollama.show_body(spec)


def _version() -> str:
    try:
        return version("edgeinfer")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"
