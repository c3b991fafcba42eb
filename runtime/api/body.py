"""Reading a JSON request body into a wire type, with errors that say what to fix."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runtime.errors import BadInput

__all__ = ["describe_validation", "first_field", "json_object", "parse_json"]

M = TypeVar("M", bound=BaseModel)


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; :class:`BadInput` saying what is wrong otherwise."""
    if not body:
        raise BadInput("the request body is empty; send a JSON object")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadInput("the request body must be a JSON object")
    return raw


def parse_json(body: bytes, model: type[M]) -> M:
    """Validate ``body`` as ``model``; malformed JSON or a bad field is :class:`BadInput`."""
    raw = json_object(body)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(describe_validation(exc), param=first_field(exc)) from None


def first_field(exc: ValidationError) -> str | None:
    """The dotted path of the first field at fault (OpenAI's ``error.param``)."""
    errors = exc.errors(include_url=False)
    loc = errors[0]["loc"] if errors else ()
    return ".".join(str(p) for p in loc) or None


def describe_validation(exc: ValidationError, whole: str = "body") -> str:
    """A pydantic error as one clause per field: where, and what is allowed there;
    ``whole`` names the validated object itself when a problem is not in one field."""
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or whole
        parts.append(f"field {field!r}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
