"""Counting tokens in and out of forwarded responses without parsing every body.

Workers send the counts as headers on whole responses. A stream's completion count is
only known at its end, in the usage event (``stream_options.include_usage``): the
gateway asks every stream for it, reads it as it passes, and removes it again when the
client did not ask for it, so the client sees exactly what it asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from runtime.api.openai import COMPLETION_TOKENS, PROMPT_TOKENS, SSE_DATA

__all__ = ["UsageTap"]


class UsageTap:
    def __init__(self, *, strip_usage_event: bool = False) -> None:
        self.strip = strip_usage_event
        self.prompt = 0
        self.completion = 0

    def headers(self, headers: Mapping[str, str]) -> None:
        self.prompt = _int(headers.get(PROMPT_TOKENS), self.prompt)
        self.completion = _int(headers.get(COMPLETION_TOKENS), self.completion)

    def chunk(self, data: bytes) -> bytes:
        """The chunk to pass on: unchanged unless it holds a usage event to remove."""
        if b'"usage"' not in data:
            return data
        kept = []
        for event in data.split(b"\n\n"):
            if event.startswith(SSE_DATA + b"{") and b'"usage"' in event:
                usage = _usage(event[len(SSE_DATA) :])
                if usage:
                    self.prompt = _count(usage.get("prompt_tokens"), self.prompt)
                    self.completion = _count(usage.get("completion_tokens"), self.completion)
                    if self.strip:
                        continue
            kept.append(event)
        return b"\n\n".join(kept)


def _int(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default


def _usage(data: bytes) -> dict[str, object]:
    """The ``usage`` object of one event, or {} for anything else (a replica's bytes
    are read, never trusted to be well formed)."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    usage = event.get("usage") if isinstance(event, dict) else None
    return usage if isinstance(usage, dict) else {}


def _count(value: object, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )
