"""Reading a JSON request body into a wire type, with errors that say what to fix."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runtime.errors import BadInput

__all__ = ["describe_validation", "json_object", "load_json", "parse_json"]

M = TypeVar("M", bound=BaseModel)


def load_json(body: bytes) -> Any:
    """``body`` parsed as JSON; :class:`BadInput` for anything the parser refuses:
    malformed text, bad UTF-8, nesting past the parser's recursion limit, or an integer
    past Python's digit limit (``sys.set_int_max_str_digits``, 4300 by default)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise BadInput("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadInput(f"request body is not valid JSON: {exc}") from None


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; :class:`BadInput` saying what is wrong otherwise."""
    if not body:
        raise BadInput("the request body is empty; send a JSON object")
    raw = load_json(body)
    if not isinstance(raw, dict):
        raise BadInput("the request body must be a JSON object")
    return raw


def parse_json(body: bytes, model: type[M]) -> M:
    """Validate ``body`` as ``model``; malformed JSON or a bad field is :class:`BadInput`."""
    raw = json_object(body)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(describe_validation(exc)) from None


def describe_validation(exc: ValidationError, whole: str = "body") -> str:
    """A pydantic error as one clause per field: where, and what is allowed there;
    ``whole`` names the validated object itself when a problem is not in one field."""
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or whole
        parts.append(f"field {field!r}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
