"""JSON Schema to llama.cpp grammar (GBNF), for decoding that cannot leave the schema.

Why llama.cpp's own grammars: they run inside the sampler chain llama-cpp-python
already builds (no second tokenizer, no extra native library in the worker), and the
converter that ships with llama-cpp-python (``llama_cpp.llama_grammar.SchemaConverter``,
a port of llama.cpp's ``json_schema_to_grammar.py``) covers the schemas OpenAI's
structured outputs accept. It falls short in known places, which are refused here
rather than silently loosened: it ignores numeric bounds, ``oneOf``'s "exactly one",
``allOf`` beyond merging properties, ``not``/``if``, most ``format``s, and its pattern
and string rules let raw control characters into strings (invalid JSON). llguidance
and xgrammar (both on PyPI) cover more of JSON Schema and mask tokens faster on large
vocabularies; at SmolLM2's 49k-token vocabulary and answers of tens of tokens the
built-in grammar sampler is not the bottleneck, so no second engine is carried.

The checker walks the schema first, mirroring the order in which the converter picks
one rule per schema: every keyword the converter would ignore is a :class:`BadInput`
naming the keyword's path, and the schema's size, nesting and repetition counts are
bounded so that a stranger's schema cannot make a grammar that costs more than the
answer. Nothing here imports llama.cpp at module import time.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from runtime.errors import BadInput

__all__ = [
    "MAX_DEPTH",
    "MAX_REPEAT",
    "MAX_SCHEMA_BYTES",
    "MAX_SUBSCHEMAS",
    "GrammarBuilder",
    "gbnf_literal",
]

MAX_SCHEMA_BYTES = 32 * 1024
MAX_SUBSCHEMAS = 256
MAX_DEPTH = 10
MAX_ENUM = 128
MAX_REPEAT = 1024  # minLength/maxLength/minItems/maxItems: the converter unrolls them
MAX_GRAMMAR_CHARS = 256 * 1024

# A JSON string's character, without raw control characters (json.loads refuses
# those, and the converter's own rule lets them through).
_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated"}
    | {"readOnly", "writeOnly"}
)
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
_WHY_NOT = {
    "oneOf": "oneOf is not supported (decoding cannot promise exactly one match); use anyOf",
    "allOf": "allOf is not supported; merge the subschemas",
    "pattern": "pattern is not supported by the grammar converter",
    "patternProperties": "patternProperties is not supported",
}


def gbnf_literal(text: str) -> str:
    """A GBNF literal matching exactly ``text``."""
    return (
        '"'
        + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        + '"'
    )


def _fail(path: str, message: str) -> BadInput:
    return BadInput(f"field {path!r}: {message}", param=path)


class _Checker:
    """Walks one schema; raises on the first keyword the converter would not honour."""

    def __init__(self, root: dict[str, Any], path: str) -> None:
        self.root = root
        self.path = path
        self.count = 0

    def defs(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            table = self.root.get(key, {})
            if not isinstance(table, dict):
                raise _fail(f"{self.path}.{key}", "must be an object of schemas")
            found.update(table)
        return found

    def check(self, schema: Any, path: str, depth: int, top: bool = False) -> None:
        if not isinstance(schema, dict):
            raise _fail(path, "a schema must be a JSON object")
        self.count += 1
        if self.count > MAX_SUBSCHEMAS:
            raise _fail(self.path, f"the schema has more than {MAX_SUBSCHEMAS} subschemas")
        if depth > MAX_DEPTH:
            raise _fail(path, f"the schema nests deeper than {MAX_DEPTH} levels")
        keys = set(schema) - _ANNOTATIONS
        if top:
            keys -= {"$defs", "definitions"}
            for name, sub in self.defs().items():
                self.check(sub, f"{self.path}.$defs.{name}", depth + 1)
        for key in sorted(keys):
            if key in _WHY_NOT:
                raise _fail(f"{path}.{key}", _WHY_NOT[key])
        used = self._branch(schema, keys, path, depth)
        for key in sorted(keys - used):
            raise _fail(
                f"{path}.{key}",
                f"keyword {key!r} is not supported here (supported: type, properties, "
                "required, additionalProperties: false, items, prefixItems, minItems, "
                "maxItems, enum, const, anyOf, $ref to $defs, minLength, maxLength, "
                "format date/time/date-time/uuid)",
            )

    def _branch(self, s: dict[str, Any], keys: set[str], path: str, depth: int) -> set[str]:
        """The keywords the converter's chosen rule for ``s`` consumes (checked)."""
        kind = s.get("type")
        if "$ref" in keys:
            ref = s["$ref"]
            prefix = next((p for p in ("#/$defs/", "#/definitions/") if str(ref).startswith(p)), "")
            if not prefix or str(ref)[len(prefix) :] not in self.defs():
                raise _fail(f"{path}.$ref", "only references to this schema's $defs are supported")
            return {"$ref"}
        if "anyOf" in keys:
            alts = s["anyOf"]
            if not isinstance(alts, list) or not alts:
                raise _fail(f"{path}.anyOf", "must be a non-empty list of schemas")
            for i, alt in enumerate(alts):
                self.check(alt, f"{path}.anyOf.{i}", depth + 1)
            return {"anyOf"}
        if isinstance(kind, list):
            if not kind or any(t not in _TYPES for t in kind):
                raise _fail(f"{path}.type", f"types must be among {sorted(_TYPES)}")
            return {"type"}
        if kind is not None and kind not in _TYPES:
            raise _fail(f"{path}.type", f"type must be one of {sorted(_TYPES)}")
        if "const" in keys:
            return {"const", "type"}
        if "enum" in keys:
            values = s["enum"]
            if not isinstance(values, list) or not 0 < len(values) <= MAX_ENUM:
                raise _fail(f"{path}.enum", f"must be a list of 1 to {MAX_ENUM} values")
            return {"enum", "type"}
        if kind in (None, "object") and ("properties" in keys or "additionalProperties" in keys):
            return self._object(s, keys, path, depth)
        if kind in (None, "array") and ("items" in keys or "prefixItems" in keys):
            return self._array(s, keys, path, depth)
        if "format" in keys:
            if kind not in (None, "string") or s["format"] not in _FORMATS:
                raise _fail(f"{path}.format", f"supported formats: {sorted(_FORMATS)} on strings")
            return {"format", "type"}
        if kind == "string" and ("minLength" in keys or "maxLength" in keys):
            self._bounds(s, path, "minLength", "maxLength")
            return {"type", "minLength", "maxLength"}
        if kind is None and keys:
            return set()  # every remaining keyword is reported as unsupported
        return {"type"}

    def _object(self, s: dict[str, Any], keys: set[str], path: str, depth: int) -> set[str]:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise _fail(f"{path}.properties", "must be an object of schemas")
        for name, sub in props.items():
            self.check(sub, f"{path}.properties.{name}", depth + 1)
        required = s.get("required", [])
        if not isinstance(required, list) or any(r not in props for r in required):
            raise _fail(f"{path}.required", "must list names declared in properties")
        extra = s.get("additionalProperties", False)
        if isinstance(extra, dict):
            if props:
                raise _fail(
                    f"{path}.additionalProperties",
                    "a schema for additional properties next to properties is not supported",
                )
            self.check(extra, f"{path}.additionalProperties", depth + 1)
        elif extra is True and props:
            raise _fail(
                f"{path}.additionalProperties",
                "true next to properties is not supported; the output holds only declared ones",
            )
        elif not isinstance(extra, bool):
            raise _fail(f"{path}.additionalProperties", "must be a boolean or a schema")
        return {"type", "properties", "required", "additionalProperties"}

    def _array(self, s: dict[str, Any], keys: set[str], path: str, depth: int) -> set[str]:
        if "prefixItems" in keys:
            if "items" in keys:
                raise _fail(f"{path}.items", "items next to prefixItems is not supported")
            tuple_items = s["prefixItems"]
            if not isinstance(tuple_items, list) or not tuple_items:
                raise _fail(f"{path}.prefixItems", "must be a non-empty list of schemas")
            for i, sub in enumerate(tuple_items):
                self.check(sub, f"{path}.prefixItems.{i}", depth + 1)
            return {"type", "prefixItems"}
        self.check(s["items"], f"{path}.items", depth + 1)
        self._bounds(s, path, "minItems", "maxItems")
        return {"type", "items", "minItems", "maxItems"}

    @staticmethod
    def _bounds(s: dict[str, Any], path: str, low: str, high: str) -> None:
        lo, hi = s.get(low, 0), s.get(high)
        for key, value in ((low, lo), (high, hi)):
            ok = value is None or (type(value) is int and 0 <= value <= MAX_REPEAT)
            if not ok:
                raise _fail(f"{path}.{key}", f"must be an integer from 0 to {MAX_REPEAT}")
        if hi is not None and lo > hi:
            raise _fail(f"{path}.{low}", f"is more than {high}")


def _strip(schema: Any, defs_prefix: str) -> Any:
    """A copy without annotations (the converter chokes on a schema holding only
    those) and with $defs renamed under ``defs_prefix``, so that several schemas'
    definitions live in one grammar without clashing."""
    if isinstance(schema, list):
        return [_strip(s, defs_prefix) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key in ("properties", "$defs", "definitions"):
            rename = key != "properties"
            out["$defs" if rename else key] = {
                (f"{defs_prefix}{k}" if rename else k): _strip(v, defs_prefix)
                for k, v in value.items()
            }
        elif key == "$ref":
            out[key] = "#/$defs/" + defs_prefix + str(value).rsplit("/", 1)[-1]
        elif key in ("enum", "const"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _strip(value, defs_prefix)
    return out


class GrammarBuilder:
    """One GBNF grammar from one or more JSON Schemas (checked and bounded), plus
    rules the caller writes around them (for tool calls)."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self._conv = SchemaConverter(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._n = 0

    def schema(self, schema: Any, path: str) -> str:
        """Adds ``schema`` (found at request field ``path``); returns its rule name."""
        if not isinstance(schema, dict):
            raise _fail(path, "a schema must be a JSON object")
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
            raise _fail(path, f"the schema is larger than {MAX_SCHEMA_BYTES} bytes")
        _Checker(schema, path).check(schema, path, 0, top=True)
        self._n += 1
        name = f"s{self._n}"
        clean = _strip(schema, f"{name}-")
        try:
            clean = self._conv.resolve_refs(clean, name)
            return str(self._conv.visit(clean, name))
        except (AssertionError, KeyError, ValueError, RecursionError) as exc:
            raise _fail(path, f"the schema cannot be turned into a grammar: {exc}") from None

    def rule(self, name: str, body: str) -> str:
        return str(self._conv._add_rule(name, body))

    def grammar(self, root: str) -> str:
        """The whole grammar text with ``root`` as its start rule."""
        rules: dict[str, str] = dict(self._conv._rules)
        if "char" in rules:
            rules["char"] = _CHAR
        rules["root"] = root
        text = "\n".join(f"{k} ::= {v}" for k, v in sorted(rules.items()))
        if len(text) > MAX_GRAMMAR_CHARS:
            raise BadInput(
                f"the schemas make a grammar of {len(text)} characters; the limit is "
                f"{MAX_GRAMMAR_CHARS}. Lower maxLength/maxItems or simplify the schema."
            )
        return text
