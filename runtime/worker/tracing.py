"""OpenTelemetry traces: the tracer set-up both processes use, W3C ``traceparent``
parsing, request ids, and the worker's replica and inference spans.

Attribute names follow OpenTelemetry's GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``,
``gen_ai.response.finish_reasons``) plus edgeinfer's own (``edgeinfer.*``).

A ``traceparent`` from outside is parsed by :func:`parse_traceparent` (W3C Trace
Context, level 1) and only a valid one is used as a parent; nothing a client sent is
forwarded as it came. A request id (``x-request-id``) is accepted only when
:func:`valid_request_id` says so (1-128 characters of ``[A-Za-z0-9._:-]``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)

from runtime.spec.telemetry import TelemetryConfig

__all__ = [
    "GEN_AI_FINISH_REASONS",
    "GEN_AI_INPUT_TOKENS",
    "GEN_AI_MODEL",
    "GEN_AI_OPERATION",
    "GEN_AI_OUTPUT_TOKENS",
    "GEN_AI_TTFT",
    "REQUEST_ID_HEADER",
    "TRACEPARENT",
    "BodyScan",
    "TracingMiddleware",
    "operation_name",
    "parent_context",
    "parse_traceparent",
    "traceparent",
    "tracer_provider",
    "valid_request_id",
]

GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_MODEL = "gen_ai.request.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_TTFT = "gen_ai.server.time_to_first_token"
GEN_AI_PROMPT = "gen_ai.prompt"
TRACEPARENT = b"traceparent"
REQUEST_ID_HEADER = b"x-request-id"
MAX_PROMPT_CHARS = 4096  # recorded prompt text (capture_prompts), at most

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/api/chat": "chat",
    "/v1/completions": "text_completion",
    "/api/generate": "text_completion",
    "/v1/embeddings": "embeddings",
    "/api/embed": "embeddings",
}
# What an answer says of its tokens and its end, found by a scan of the bytes that pass
# (whole JSON answers, SSE events, NDJSON lines), never by parsing a whole stream.
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens|prompt_eval_count)"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens|eval_count)"\s*:\s*(\d{1,12})')
_FINISH = re.compile(rb'"(?:finish_reason|done_reason)"\s*:\s*"([a-z_]{1,32})"')


def tracer_provider(
    config: TelemetryConfig, otel_env: Mapping[str, str], service: str
) -> Any | None:
    """An SDK ``TracerProvider`` exporting over OTLP/HTTP in batches, or None when
    telemetry is off (``config.active``). The SDK is imported only when on."""
    if not config.active(otel_env):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    name = config.service_name or otel_env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({"service.name": name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    endpoint = None
    if config.endpoint is not None:
        endpoint = config.endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint),
            schedule_delay_millis=config.export_delay_ms,
        )
    )
    return provider


def parse_traceparent(value: bytes | str | None) -> SpanContext | None:
    """The remote span a W3C ``traceparent`` names, or None for anything not valid:
    version ``ff``, all-zero ids, upper-case hex, a version-00 value with extra
    fields, or more than 256 bytes."""
    if value is None or len(value) > 256:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    m = _TRACEPARENT.match(text.strip(" \t"))
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    return SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16) & 0x01),
    )


def traceparent(context: SpanContext) -> bytes:
    """``context`` as a version-00 ``traceparent`` value (re-emitted, never copied)."""
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


def parent_context(span_context: SpanContext | None) -> Any:
    """An OpenTelemetry ``Context`` whose current span is ``span_context`` (None: a
    new root)."""
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def valid_request_id(value: bytes | str | None) -> str | None:
    """``value`` when it is a usable request id (1-128 of ``[A-Za-z0-9._:-]``)."""
    if value is None or len(value) > 128:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text if _REQUEST_ID.match(text) else None


def operation_name(path: str) -> str:
    """The GenAI operation a route performs (``infer`` for OIP v2, ``http`` else)."""
    if path in _OPERATIONS:
        return _OPERATIONS[path]
    return "infer" if path.endswith("/infer") else "http"


class BodyScan:
    """Token counts and finish reasons seen in an answer's bytes, chunk by chunk.
    An event split across two chunks may be missed: counts are a trace attribute
    here, not the usage ledger (the gateway's ``UsageTap`` is)."""

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish_reasons: list[str] = []

    def feed(self, chunk: bytes) -> None:
        if b'"' not in chunk:
            return
        if (m := _PROMPT.search(chunk)) is not None:
            self.input_tokens = int(m.group(1))
        if (m := _COMPLETION.search(chunk)) is not None:
            self.output_tokens = int(m.group(1))
        for reason in _FINISH.findall(chunk):
            if len(self.finish_reasons) < 16:
                self.finish_reasons.append(reason.decode())

    def attributes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.input_tokens is not None:
            out[GEN_AI_INPUT_TOKENS] = self.input_tokens
        if self.output_tokens is not None:
            out[GEN_AI_OUTPUT_TOKENS] = self.output_tokens
        if self.finish_reasons:
            out[GEN_AI_FINISH_REASONS] = self.finish_reasons
        return out


class TracingMiddleware:
    """ASGI middleware of the worker: per request a ``replica`` span (SERVER, child of
    the gateway's span through ``traceparent``) and inside it an ``inference`` span
    with the GenAI attributes, its time to first token and what the answer says of its
    tokens and finish reasons. Probes and ``/metrics`` are not traced."""

    def __init__(
        self,
        app: Any,
        tracer: Tracer,
        *,
        model: str,
        runtime: str,
        device: str,
        capture_prompts: bool = False,
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.attrs = {
            GEN_AI_MODEL: model,
            "edgeinfer.model": model,
            "edgeinfer.runtime": runtime,
            "edgeinfer.device": device,
        }
        self.capture_prompts = capture_prompts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] == "GET":
            await self.app(scope, receive, send)
            return
        traceparent_from: bytes | None = None
        request_id = None
        for name, value in scope["headers"]:
            if name == TRACEPARENT and traceparent_from is None:
                traceparent_from = value
            elif name == REQUEST_ID_HEADER and request_id is None:
                request_id = valid_request_id(value)
        parent = parent_context(parse_traceparent(traceparent_from))
        operation = operation_name(path)
        replica = self.tracer.start_span(
            f"replica {self.attrs[GEN_AI_MODEL]}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                **self.attrs,
                "http.request.method": scope["method"],
                "url.path": path[:256],
                **({"edgeinfer.request_id": request_id} if request_id else {}),
            },
        )
        with trace.use_span(replica, end_on_exit=True):
            inference = self.tracer.start_span(
                f"{operation} {self.attrs[GEN_AI_MODEL]}",
                kind=SpanKind.INTERNAL,
                attributes={**self.attrs, GEN_AI_OPERATION: operation},
            )
            scan = BodyScan()
            started = time.perf_counter()
            first: list[float] = []
            status = [500]
            prompt: list[bytes] = []

            async def receive_body() -> Any:
                message = await receive()
                if message.get("type") == "http.request" and sum(map(len, prompt)) < 65536:
                    prompt.append(message.get("body", b"")[:65536])
                return message

            async def send_traced(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                elif message["type"] == "http.response.body":
                    body = message.get("body", b"")
                    if body and not first:
                        first.append(time.perf_counter())
                    scan.feed(body)
                await send(message)

            try:
                with trace.use_span(inference, end_on_exit=False):
                    await self.app(
                        scope, receive_body if self.capture_prompts else receive, send_traced
                    )
            except BaseException as exc:
                inference.record_exception(exc)
                inference.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                attrs = scan.attributes()
                if first:
                    attrs[GEN_AI_TTFT] = first[0] - started
                if self.capture_prompts and prompt:
                    text = b"".join(prompt).decode("utf-8", "replace")
                    attrs[GEN_AI_PROMPT] = text[:MAX_PROMPT_CHARS]
                inference.set_attributes(attrs)
                replica.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    replica.set_status(Status(StatusCode.ERROR))
                inference.end()
