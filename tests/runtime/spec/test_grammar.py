"""JSON Schema to GBNF: what is refused (by keyword path) and what the grammar says.

The grammars are checked for real against llama.cpp in
``tests/runtime/worker/test_worker_structured.py``; here only the schema checker and
the reading back of answers, which need no model."""

from __future__ import annotations

import pytest

from runtime.api.structured import (
    JsonSchemaFormat,
    NamedToolChoice,
    ToolCallStream,
    ToolDef,
    plan_decoding,
    read_answer,
)
from runtime.errors import BadInput
from runtime.spec.grammar import MAX_DEPTH, MAX_REPEAT, GrammarBuilder


def schema_format(schema: object) -> JsonSchemaFormat:
    return JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    )


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "number", "minimum": 0}, "S.minimum"),
        ({"type": "integer", "multipleOf": 2}, "S.multipleOf"),
        ({"oneOf": [{"type": "string"}]}, "S.oneOf"),
        ({"allOf": [{"type": "string"}]}, "S.allOf"),
        ({"type": "object", "properties": {"a": {"not": {}}}}, "S.properties.a.not"),
        ({"type": "string", "pattern": "^a+$"}, "S.pattern"),
        ({"type": "string", "format": "email"}, "S.format"),
        ({"$ref": "https://example.com/s.json"}, "S.$ref"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "S.required"),
        ({"type": "array", "items": {}, "uniqueItems": True}, "S.uniqueItems"),
        ({"type": "string", "maxLength": MAX_REPEAT + 1}, "S.maxLength"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "S.minLength"),
        (
            {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
            "S.additionalProperties",
        ),
        ({"type": "decimal"}, "S.type"),
        ({"type": ["object", "null"], "properties": {"a": {}}}, "S.properties"),
        (nested(MAX_DEPTH + 1), None),
        ({"enum": list(range(1000))}, "S.enum"),
    ],
)
def test_refused_keywords_are_named(schema: object, param: str | None) -> None:
    with pytest.raises(BadInput) as info:
        GrammarBuilder().schema(schema, "S")
    if param is not None:
        assert info.value.param == param
        assert repr(param) in info.value.message
    else:
        assert "deeper" in info.value.message


def test_supported_schema_makes_one_grammar_with_safe_strings() -> None:
    schema = {
        "type": "object",
        "title": "ignored annotation",
        "properties": {
            "name": {"type": "string", "maxLength": 8, "description": "x"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "maxItems": 2},
            "when": {"type": "string", "format": "date"},
            "kind": {"anyOf": [{"const": 1}, {"type": "null"}]},
        },
        "required": ["name"],
        "$defs": {"Tag": {"enum": ["a", "b"]}},
    }
    plan = plan_decoding(schema_format(schema), None, None, True)
    assert plan.grammar is not None and plan.mode == "text"
    assert "root ::= s1" in plan.grammar
    # No raw control characters inside strings (json.loads would refuse them).
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in plan.grammar


def test_two_tools_with_the_same_def_names_do_not_clash() -> None:
    def tool(name: str, inner: str) -> ToolDef:
        return ToolDef.model_validate(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "parameters": {
                        "type": "object",
                        "properties": {"v": {"$ref": "#/$defs/V"}},
                        "required": ["v"],
                        "$defs": {"V": {"type": inner}},
                    },
                },
            }
        )

    plan = plan_decoding(None, [tool("f", "string"), tool("g", "boolean")], "required", False)
    assert plan.grammar is not None and plan.mode == "tools"
    assert "s1-v ::= string" in plan.grammar and "s2-v ::= boolean" in plan.grammar
    with pytest.raises(BadInput) as info:
        plan_decoding(
            None,
            [tool("f", "string")],
            NamedToolChoice.model_validate({"type": "function", "function": {"name": "h"}}),
            True,
        )
    assert info.value.param == "tool_choice.function.name"


def test_reading_answers_whole_and_streamed() -> None:
    calls = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    content, found = read_answer(calls + "\n" + calls, "tools")
    assert content is None and [c["function"]["arguments"] for c in found] == ['{"x": 1}'] * 2
    assert found[0]["id"] != found[1]["id"]
    assert read_answer("Hello", "auto") == ("Hello", [])
    cut = calls[:20]
    assert read_answer(cut, "tools") == (cut, [])
    content, found = read_answer(calls + "\n" + cut, "tools")
    assert content is None and len(found) == 1
    stream = ToolCallStream("auto")
    out = [stream.feed(piece) for piece in (calls[:5], calls[5:30], calls[30:], "\n" + calls)]
    assert [len(c) for _, c in out] == [0, 0, 1, 1] and all(t == "" for t, _ in out)
    text = ToolCallStream("auto")
    assert text.feed("Hi") == ("Hi", []) and text.feed(" <there") == (" <there", [])
