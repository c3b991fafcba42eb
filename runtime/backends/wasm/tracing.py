"""A host span around each call into a WASM guest, child of the request's current span
(the worker's inference span), carrying the W3C ``traceparent`` of the trace it joins
(``edgeinfer.wasm.traceparent``), so a guest call is found in the request's trace.

Spans go to the process's tracer provider (the worker sets it when telemetry is on);
with none set, OpenTelemetry's API hands out non-recording spans that cost next to
nothing. A span is started without being made current (a generator's yields may
resume in another context) and always ended.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["guest_call", "traced_stream"]

T = TypeVar("T")


def _start(model: str, abi: str, call: str) -> Span:
    span = trace.get_tracer("edgeinfer.wasm").start_span(
        f"wasm {call} {model}",
        kind=SpanKind.INTERNAL,
        attributes={
            "edgeinfer.model": model,
            "edgeinfer.wasm.abi": abi,
            "edgeinfer.wasm.call": call,
        },
    )
    context = span.get_span_context()
    if context.is_valid:
        span.set_attribute(
            "edgeinfer.wasm.traceparent",
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}",
        )
    return span


@asynccontextmanager
async def guest_call(model: str, abi: str, call: str) -> AsyncIterator[Span]:
    """A span for one call (``embed``, ``infer``) into ``model``'s guest."""
    span = _start(model, abi, call)
    try:
        yield span
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()


async def traced_stream(
    model: str, abi: str, stream: AsyncGenerator[T, None]
) -> AsyncGenerator[T, None]:
    """``stream`` (a generation) inside one span, counting what it yielded."""
    span = _start(model, abi, "stream")
    n = 0
    try:
        async for item in stream:
            n += 1
            yield item
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        await stream.aclose()
        span.set_attribute("edgeinfer.wasm.chunks", n)
        span.end()
