"""Counting tokens in and out of forwarded answers, reading only what carries counts.

Where the counts are, per answer:

- our workers' headers (``x-edgeinfer-prompt-tokens``/``-completion-tokens``) on whole
  answers; a stream's completion count is only known at its end, so also:
- OpenAI chat and completions streams: the usage event
  (``stream_options.include_usage``). The gateway asks every stream for it, reads it as
  it passes, and removes it again when the client did not ask for it, so the client
  sees exactly what it asked for;
- ``/v1/responses``: ``usage`` (``input_tokens``/``output_tokens``) of the answer, and
  of the ``response`` in its streamed ``response.completed`` (or ``.incomplete``)
  event;
- Ollama's answers: ``prompt_eval_count``/``eval_count`` of the whole answer or of the
  NDJSON stream's last line (``"done": true``);
- a whole JSON answer from a replica that sends no count headers (an external
  endpoint): its ``usage`` object or Ollama's counts.

Bounded: an event or line is carried across chunks up to :data:`MAX_EVENT` bytes; a
longer one is skipped, never buffered whole (its counts, if any, are lost). Only the
bytes that hold a count are parsed, and a replica's bytes are never trusted to be well
formed: anything unexpected counts nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS, SSE_DATA

__all__ = ["MAX_EVENT", "UsageTap"]

# An event or line carried across chunks, and a whole answer parsed for its counts: a
# response.completed event repeats the whole answer, so this is far above an event's
# usual size, and it is the most one answer's tap holds.
MAX_EVENT = 1 << 20
_COUNTS = (b'"usage"', b'"eval_count"')
_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class UsageTap:
    """One forwarded answer's token counts: ``prompt`` and ``completion``.

    The proxy calls :meth:`headers` first, then :meth:`body` for an answer that is all
    there, or :meth:`chunk` per chunk and :meth:`end` after the last."""

    def __init__(self, *, strip_usage_event: bool = False) -> None:
        self.strip = strip_usage_event
        self.prompt = 0
        self.completion = 0
        self._separator = b"\n\n"  # SSE events; NDJSON lines are b"\n"
        self._tail = b""  # the unfinished event or line, carried to the next chunk
        self._skipping = False  # inside an event longer than MAX_EVENT

    def headers(self, headers: Mapping[str, str]) -> None:
        """The answer's headers (names in lower case): count headers and its type."""
        self.prompt = _int(headers.get(PROMPT_TOKENS), self.prompt)
        self.completion = _int(headers.get(COMPLETION_TOKENS), self.completion)
        if headers.get("content-type", "").startswith("application/x-ndjson"):
            self._separator = b"\n"

    def body(self, data: bytes) -> None:
        """A whole answer: its counts, when it holds them and is not too big to parse."""
        if len(data) <= MAX_EVENT and any(key in data for key in _COUNTS):
            self._read(_json(data))

    def chunk(self, data: bytes) -> bytes:
        """The chunk to pass on: unchanged unless it holds a usage event to remove."""
        self._scan(data)
        if not (self.strip and b'"usage"' in data):
            return data
        # Workers write each event in one chunk: a usage event split across chunks is
        # counted above but passed on (one extra event, never a broken one).
        kept = [
            event
            for event in data.split(b"\n\n")
            if not (event.startswith(SSE_DATA + b"{") and _usage(_json(event[len(SSE_DATA) :])))
        ]
        return b"\n\n".join(kept)

    def end(self) -> None:
        """The answer ended: what is left unfinished is its last event, line or body."""
        if self._tail and not self._skipping:
            self._event(self._tail)
        self._tail = b""

    def _scan(self, data: bytes) -> None:
        parts = (self._tail + data).split(self._separator)
        rest = parts.pop()
        if self._skipping:
            if not parts:
                return  # still inside the oversized event
            parts.pop(0)  # its end
            self._skipping = False
        for part in parts:
            self._event(part)
        if len(rest) > MAX_EVENT:
            rest, self._skipping = b"", True
        self._tail = rest

    def _event(self, raw: bytes) -> None:
        if not any(key in raw for key in _COUNTS):
            return
        if self._separator == b"\n\n":  # SSE: the event's data line(s)
            data = b"".join(
                line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")
            )
            self._read(_json(data) if data else _json(raw))
        else:
            self._read(_json(raw))

    def _read(self, answer: dict[str, Any]) -> None:
        usage = _usage(answer)
        if not usage and answer.get("type") in _FINAL_EVENTS:
            response = answer.get("response")
            usage = _usage(response) if isinstance(response, dict) else {}
        if usage:
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
        elif answer.get("done") is True or "eval_count" in answer:
            prompt, completion = answer.get("prompt_eval_count"), answer.get("eval_count")
        else:
            return
        self.prompt = _count(prompt, self.prompt)
        self.completion = _count(completion, self.completion)


def _int(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() and len(value) < 19 else default


def _json(data: bytes) -> dict[str, Any]:
    """A JSON object, or {} for anything else."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _usage(answer: dict[str, Any]) -> dict[str, Any]:
    usage = answer.get("usage")
    return usage if isinstance(usage, dict) else {}


def _count(value: object, default: int) -> int:
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40
        else default
    )
