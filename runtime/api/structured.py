"""Structured output and tool calling on OpenAI's chat API: wire types, the prompt that
describes tools, the grammar that constrains the answer, and reading the answer back.

Follows OpenAI's API reference for ``response_format`` (``text``, ``json_object``,
``json_schema`` with ``name``/``schema``/``strict``) and for ``tools`` /
``tool_choice`` / ``parallel_tool_calls`` ("Controls which (if any) tool is called by
the model"). Both are enforced while decoding (``runtime.grammar``), strict or not:
the answer parses, and validates against the schema, unless ``max_tokens`` cuts it
(``finish_reason: "length"``).

The tool format. The bundled SmolLM2's chat template (GGUF ``tokenizer.chat_template``)
has no tool format, so edgeinfer uses this documented one, for every model. The tools
are described in the system message (appended to the caller's, or as one of its own)::

    # Tools
    ...
    <tools>
    {"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}
    </tools>

and the model calls a function by answering, once per call::

    <tool_call>
    {"name": "NAME", "arguments": {...}}
    </tool_call>

Assistant messages that carry ``tool_calls`` are written back into the history in
that form, and ``tool`` messages keep their role with the content inside
``<tool_response>`` tags. Under ``tool_choice: "auto"`` the grammar lets the model
either begin a call or write text that does not begin with ``<``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import BadInput
from runtime.spec.grammar import GrammarBuilder, gbnf_literal

__all__ = [
    "MAX_PARALLEL_CALLS",
    "MAX_TOOLS",
    "DecodingPlan",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCall",
    "ToolCallStream",
    "ToolChoice",
    "ToolDef",
    "plan_decoding",
    "read_answer",
    "render_tool_calls",
    "render_tool_response",
]

MAX_TOOLS = 32
MAX_PARALLEL_CALLS = 8
_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaSpec(_Strict):
    name: str = Field(pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class FunctionDef(_Strict):
    name: str = Field(pattern=_NAME)
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class _FunctionName(_Strict):
    name: str = Field(pattern=_NAME)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _FunctionCall(_Strict):
    name: str = Field(pattern=_NAME)
    arguments: str = Field(max_length=65536)


class ToolCall(_Strict):
    """A call in an assistant message of the history."""

    id: str = Field(max_length=128)
    type: Literal["function"]
    function: _FunctionCall


@dataclass(frozen=True)
class DecodingPlan:
    """What a chat request's answer must look like. ``tools_prompt`` goes into the
    system message; ``mode`` says how to read the answer: ``text``, ``tools`` (only
    calls) or ``auto`` (calls or text, decided by the first character)."""

    grammar: str | None = None
    tools_prompt: str | None = None
    mode: Literal["text", "tools", "auto"] = "text"


def _schema_root(builder: GrammarBuilder, fmt: Any, path: str) -> str | None:
    """The rule for the answer that ``response_format`` asks for, or None for text."""
    if isinstance(fmt, JsonObjectFormat):
        return builder.schema({"type": "object"}, path)
    if isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}
        return builder.schema(schema, path)
    return None


def plan_decoding(
    response_format: Any,
    tools: list[ToolDef] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool,
    *,
    schema_path: str = "response_format.json_schema.schema",
    tool_path: str = "tools.{i}.function",
) -> DecodingPlan:
    """The grammar and prompt for a chat request; :class:`BadInput` naming the field
    for what cannot be honoured (``schema_path`` and ``tool_path`` say where the
    schemas are in the request, for the Responses API's different shape)."""
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice != "none" and not tools:
        raise BadInput("tool_choice needs tools to choose from", param="tool_choice")
    if tools and len(tools) > MAX_TOOLS:
        raise BadInput(f"at most {MAX_TOOLS} tools per request", param="tools")
    names = [t.function.name for t in tools or []]
    if len(set(names)) != len(names):
        raise BadInput("tool function names must be unique", param="tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise BadInput(
            f"tool_choice names {choice.function.name!r}, which is not among the tools",
            param="tool_choice.function.name" if "function" in tool_path else "tool_choice.name",
        )
    builder = GrammarBuilder()
    answer = _schema_root(builder, response_format, schema_path)
    if choice == "none" or not tools:
        return DecodingPlan(grammar=builder.grammar(answer) if answer else None)
    calls = []
    for i, tool in enumerate(tools):
        fn = tool.function
        params = (
            fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
        )
        args = builder.schema(params, tool_path.format(i=i) + ".parameters")
        if isinstance(choice, NamedToolChoice) and fn.name != choice.function.name:
            continue
        head = gbnf_literal(f'<tool_call>\n{{"name": {json.dumps(fn.name)}, "arguments": ')
        tail = gbnf_literal("}\n</tool_call>")
        calls.append(builder.rule(f"call-{i}", f"{head} {args} {tail}"))
    call = builder.rule("call", " | ".join(calls))
    many = f'("\\n" {call}){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel_tool_calls else ""
    root_calls = f"{call} {many}".strip()
    prompt = _tools_prompt(tools)
    if choice == "auto":
        text = answer or builder.rule("free-text", r"[^<\x00] [^\x00]*")
        return DecodingPlan(builder.grammar(f"({root_calls}) | {text}"), prompt, "auto")
    return DecodingPlan(builder.grammar(root_calls), prompt, "tools")


def _tools_prompt(tools: list[ToolDef]) -> str:
    lines = [
        json.dumps({"type": "function", "function": t.function.model_dump(exclude_none=True)})
        for t in tools
    ]
    return (
        "# Tools\n\nYou may call one or more functions to answer. The functions, with "
        "their parameters as JSON Schema:\n<tools>\n"
        + "\n".join(lines)
        + "\n</tools>\n\nTo call a function, answer with one block per call:\n"
        '<tool_call>\n{"name": <function name>, "arguments": <arguments object>}\n'
        "</tool_call>"
    )


def render_tool_calls(calls: list[ToolCall]) -> str:
    """Assistant ``tool_calls`` of the history, in the tool format."""
    blocks = []
    for c in calls:
        try:
            args = json.loads(c.function.arguments)
        except json.JSONDecodeError:
            raise BadInput(
                f"tool call {c.id!r}: arguments are not JSON",
                param="messages.tool_calls.function.arguments",
            ) from None
        body = json.dumps({"name": c.function.name, "arguments": args}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(blocks)


def render_tool_response(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


def _new_call(body: str) -> dict[str, Any]:
    data = json.loads(body)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": data["name"],
            "arguments": json.dumps(data["arguments"], ensure_ascii=False),
        },
    }


def read_answer(text: str, mode: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a whole answer decoded under ``mode``'s grammar. An
    answer cut short (``max_tokens``) before its first call is whole is returned as
    text; one cut in a later call keeps the calls before it."""
    if mode == "text" or (mode == "auto" and not text.startswith("<")):
        return text, []
    matches = list(_CALL.finditer(text))
    if not matches or not text.startswith("\n".join(m.group(0) for m in matches)):
        return text, []
    # Calls after the last whole one were cut short by max_tokens: the whole ones stand.
    return None, [_new_call(m.group(1)) for m in matches]


@dataclass
class ToolCallStream:
    """Reads a streamed answer: passes text through, holds tool calls until each is
    whole, then hands it out (OpenAI's clients accept a call's arguments in one delta)."""

    mode: str
    buffer: str = ""
    calling: bool | None = None
    calls: int = 0
    _pos: int = field(default=0)

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        if self.mode == "text" or self.calling is False:
            return text, []
        self.buffer += text
        if self.calling is None:
            if not self.buffer:
                return "", []
            self.calling = self.mode == "tools" or self.buffer.startswith("<")
            if not self.calling:
                out, self.buffer = self.buffer, ""
                return out, []
        found = []
        for match in _CALL.finditer(self.buffer, self._pos):
            found.append(_new_call(match.group(1)))
            self._pos = match.end()
        self.calls += len(found)
        return "", found

    def rest(self) -> str:
        """What was held and never became a whole call (an answer cut short)."""
        if not self.calling:
            return ""
        tail = self.buffer[self._pos :].strip("\n")
        return tail if self.calls == 0 else ""
