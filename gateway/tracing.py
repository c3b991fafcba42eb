"""The gateway's spans of one request: gateway → queue wait → cold start (spawn, load,
warm-up) → the replica's span (in the worker, joined by ``traceparent``).

The client's ``traceparent`` is parsed (``runtime.worker.tracing.parse_traceparent``)
and a valid one becomes the gateway span's parent; the replica gets a ``traceparent``
the gateway writes itself: its own span's when tracing is on, else the client's
parsed value re-emitted, so a trace still joins across an untraced gateway.

The cold start a request waited on is drawn from the pool's :class:`ColdStart` record
(phases in order, ending at ``finished_at``), with explicit start and end times, as
children of the queue-wait span. With no tracer every method does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, Tracer

from runtime.scaling.replica import ColdStart
from runtime.spec.placement import Tier
from runtime.worker.tracing import (
    GEN_AI_FINISH_REASONS,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_MODEL,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_TTFT,
    operation_name,
    parent_context,
    parse_traceparent,
    traceparent,
)

__all__ = ["UNTRACED", "RequestTrace"]

_NS = 1_000_000_000


class RequestTrace:
    """One request's spans. ``clock`` is the pool's clock (cold starts are in it).
    ``traced``: whether there is a span (else every method but
    :meth:`upstream_traceparent` does nothing, and callers may skip them)."""

    def __init__(
        self,
        tracer: Tracer | None,
        clock: Callable[[], float],
        client_traceparent: bytes | None,
        method: str,
        path: str,
        request_id: str,
    ) -> None:
        self.clock = clock
        self.remote: SpanContext | None = parse_traceparent(client_traceparent)
        self.span: Any = None
        self.tracer = tracer
        if tracer is not None:
            self.span = tracer.start_span(
                f"{method} {path[:128]}",
                context=parent_context(self.remote),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.path": path[:256],
                    "edgeinfer.request_id": request_id,
                },
            )
        self.traced = self.span is not None

    def upstream_traceparent(self) -> bytes | None:
        """The ``traceparent`` the replica gets: the gateway span's, or the client's
        parsed and written again; None when there is neither."""
        if self.span is not None:
            return traceparent(self.span.get_span_context())
        return None if self.remote is None else traceparent(self.remote)

    def model(self, model: str, path: str, key: str) -> None:
        if self.span is not None:
            self.span.set_attributes(
                {
                    GEN_AI_OPERATION: operation_name(path),
                    GEN_AI_MODEL: model,
                    "edgeinfer.key": key,
                }
            )

    def queue_wait(
        self,
        begun: float,
        ended: float,
        cold: ColdStart | None,
        launched: float,
        on: Tier | None,
    ) -> None:
        """A span for the wait for a replica slot (``begun``..``ended`` in the pool's
        clock), and in it the cold start it waited on (of the replica ``launched`` at
        that time, on tier ``on``), phase by phase."""
        if self.span is None or self.tracer is None:
            return
        tier: dict[str, str] = {}
        if on is not None:
            tier = {
                "edgeinfer.tier": on.key,
                "edgeinfer.role": on.role.value,  # primary or bridge
                "edgeinfer.runtime": on.runtime.value,
                "edgeinfer.device": on.device.value,
            }
        self.span.set_attributes(tier)
        context = trace.set_span_in_context(self.span)
        wait = self.tracer.start_span(
            "queue wait",
            context=context,
            start_time=self._epoch_ns(begun),
            attributes={"edgeinfer.queue_wait_s": max(0.0, ended - begun)},
        )
        if cold is not None:
            self._cold_start(wait, cold, launched, tier)
        wait.end(self._epoch_ns(ended))

    def _cold_start(
        self, parent: Any, cold: ColdStart, launched: float, tier: dict[str, str]
    ) -> None:
        """The cold start from the replica's launch to the moment it was seen ready.
        ``spawn`` runs from the launch (until the worker answered HTTP); ``load`` and
        ``warmup``, which the worker measured itself (its load begins while its server
        starts, so they may overlap ``spawn``), are laid back from the ready moment."""
        assert self.tracer is not None
        start, end = self._epoch_ns(launched), self._epoch_ns(cold.finished_at)
        span = self.tracer.start_span(
            "cold start",
            context=trace.set_span_in_context(parent),
            start_time=start,
            attributes={
                "edgeinfer.cold_start_s": cold.total,
                **{f"edgeinfer.cold_start.{k}_s": v for k, v in cold.phases.items()},
                **tier,
            },
        )
        inner = trace.set_span_in_context(span)
        phases = dict(cold.phases)
        if "spawn" in phases:
            n = int(phases.pop("spawn") * _NS)
            self.tracer.start_span("spawn", context=inner, start_time=start).end(start + n)
        at = end
        for phase, seconds in reversed(phases.items()):
            n = int(seconds * _NS)
            self.tracer.start_span(phase, context=inner, start_time=at - n).end(at)
            at -= n
        span.end(end)

    def finish(
        self,
        status: int,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        ttft: float | None = None,
        finish_reasons: list[str] | None = None,
    ) -> None:
        if self.span is None:
            return
        attrs: dict[str, Any] = {"http.response.status_code": status}
        if input_tokens or output_tokens:
            attrs[GEN_AI_INPUT_TOKENS] = input_tokens
            attrs[GEN_AI_OUTPUT_TOKENS] = output_tokens
        if ttft is not None:
            attrs[GEN_AI_TTFT] = ttft
        if finish_reasons:
            attrs[GEN_AI_FINISH_REASONS] = finish_reasons
        self.span.set_attributes(attrs)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()

    def _epoch_ns(self, at: float) -> int:
        """Clock time ``at`` as nanoseconds since the epoch (what spans are timed in)."""
        return time.time_ns() - int((self.clock() - at) * _NS)


# The trace of a request with neither a tracer nor a client's traceparent: one shared,
# stateless instance (every method does nothing), not one built per request.
UNTRACED = RequestTrace(None, time.monotonic, None, "", "", "")
