"""Reading a JSON request body into a wire type, with errors that say what to fix."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from runtime.errors import BadInput, describe_validation

__all__ = ["first_field", "json_object", "load_json", "parse_json"]

M = TypeVar("M", bound=BaseModel)

# Arrays and objects inside one another: far deeper than any request of these APIs
# (an OIP tensor nests one list per dimension), far below the parser's recursion limit.
MAX_DEPTH = 64
# A JSON string (escapes included), removed before brackets are counted.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BLOCK = 1 << 20
# A \u escape of a UTF-16 surrogate (paired or not): the bodies checked for lone ones.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def load_json(body: bytes, *, unique_keys: Collection[str] = ()) -> Any:
    """``body`` parsed as JSON; :class:`BadInput` saying what is wrong otherwise:
    malformed text or bad UTF-8, nested deeper than :data:`MAX_DEPTH`, an integer past
    Python's digit limit (``sys.set_int_max_str_digits``), or one of ``unique_keys``
    given twice in one object (which one counts is a guess two parsers may make
    differently)."""
    if _too_deep(body, MAX_DEPTH):
        raise BadInput(f"request body is nested deeper than {MAX_DEPTH} arrays/objects")
    hook = None
    # A duplicate key needs the key twice, literally or spelt with a \u escape: the
    # plain parse (C speed) serves every other body.
    if unique_keys and (
        b"\\u" in body or any(body.count(b'"%b"' % k.encode()) > 1 for k in unique_keys)
    ):
        hook = _unique(frozenset(unique_keys))
    try:
        value = json.loads(body, object_pairs_hook=hook)
    except RecursionError:
        raise BadInput("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadInput(f"request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body):  # only such bodies pay for the walk
        _check_text(value, "")
    return value


def _check_text(value: Any, where: str) -> None:
    """BadInput naming the field of the first string holding a lone UTF-16 surrogate
    (JSON lets ``\\ud800`` through; no tokenizer can encode it, and a 500 came of it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            field = f"field {where!r}" if where else "the body"
            raise BadInput(
                f"{field} holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape "
                "without its pair): not text",
                param=where or None,
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}.{i}" if where else str(i))


def json_object(body: bytes, *, unique_keys: Collection[str] = ()) -> dict[str, Any]:
    """``body`` as a JSON object (see :func:`load_json`); :class:`BadInput` saying what
    is wrong otherwise."""
    if not body:
        raise BadInput("the request body is empty; send a JSON object")
    raw = load_json(body, unique_keys=unique_keys)
    if not isinstance(raw, dict):
        raise BadInput("the request body must be a JSON object")
    return raw


def _unique(keys: frozenset[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen and key in keys:
                    raise BadInput(f"field {key!r} is given twice; give it once")
                seen.add(key)
        return obj

    return hook


def _too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``: counted outside strings, at C
    speed (regex, translate, numpy) and only for a body with that many brackets at all."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    import numpy as np  # only for bodies with many brackets

    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(brackets), _BLOCK):
        block = np.frombuffer(brackets, np.uint8, min(_BLOCK, len(brackets) - start), start)
        steps = np.where((block == 0x5B) | (block == 0x7B), 1, -1).astype(np.int32)
        running = np.cumsum(steps) + depth
        if int(running.max()) > limit:
            return True
        depth = int(running[-1])
    return False


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
