"""What the gateway records of each request, and where it goes when the request ends:
the usage ledger (``gateway.accounting``), the access log (``gateway.access_log``),
the trace (``gateway.tracing``) and the dashboard's history (``gateway.dashboard``).

A request id comes from the client's ``x-request-id`` when it is valid (1-128 of
``[A-Za-z0-9._:-]``), else is made here; it is returned on the response and sent to
the replica, with a ``traceparent`` the gateway writes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry
from starlette.types import Message, Scope, Send

from gateway import access_log
from gateway.accounting import NO_KEY, UsageLedger
from gateway.dashboard.history import History
from gateway.tracing import UNTRACED, RequestTrace
from runtime.scaling.replica import ColdStart, Replica
from runtime.scaling.source import ReplicaSource
from runtime.worker.tracing import REQUEST_ID_HEADER, TRACEPARENT, valid_request_id

__all__ = ["Observer", "RequestRecord"]

# Request ids the gateway makes: 24 hex digits counting up from a random start, so one
# process never repeats one and processes do not share a sequence (a read of the
# kernel's random source per request cost more than the rest of the record).
_IDS = itertools.count(int.from_bytes(os.urandom(12), "big"))
_ID_MASK = (1 << 96) - 1


@dataclass(slots=True)
class RequestRecord:
    """One request as the gateway saw it; times in seconds."""

    request_id: str
    method: str
    path: str
    started: float  # perf_counter()
    started_epoch: float
    trace: RequestTrace
    key: str = NO_KEY
    model: str = ""
    route: str = ""
    tier: str | None = None
    role: str | None = None
    status: int = 500
    latency: float | None = None
    queue_wait: float | None = None
    cold_start: ColdStart | None = None
    ttft: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    def response_header(self) -> tuple[bytes, bytes]:
        """The ``x-request-id`` header every answer carries."""
        return (REQUEST_ID_HEADER, self.request_id.encode("ascii"))

    def replica_headers(self) -> list[tuple[bytes, bytes]]:
        """The request id and trace context the replica gets (written here)."""
        out = [(REQUEST_ID_HEADER, self.request_id.encode("ascii"))]
        parent = self.trace.upstream_traceparent()
        if parent is not None:
            out.append((TRACEPARENT, parent))
        return out


class Observer:
    """Begins and ends every request's record. ``tracer`` None: no spans."""

    def __init__(
        self,
        registry: CollectorRegistry,
        keys: Iterable[str],
        supervisor: ReplicaSource,
        *,
        tracer: Tracer | None,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = UsageLedger(registry, keys)
        self.history = History(supervisor)
        self.tracer = tracer
        self.clock = clock

    def begin(self, scope: Scope) -> RequestRecord:
        request_id = client_traceparent = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and request_id is None:
                request_id = valid_request_id(value)
            elif name == TRACEPARENT and client_traceparent is None:
                client_traceparent = value
        request_id = request_id or f"{next(_IDS) & _ID_MASK:024x}"
        method, path = scope["method"], scope["path"]
        # Only POSTs (the inference routes) are traced: probes, scrapes and the
        # dashboard's polling would bury them.
        tracer = self.tracer if method == "POST" else None
        trace = (
            UNTRACED
            if tracer is None and client_traceparent is None
            else RequestTrace(tracer, self.clock, client_traceparent, method, path, request_id)
        )
        return RequestRecord(request_id, method, path, time.perf_counter(), time.time(), trace)

    @staticmethod
    def send_with_id(record: RequestRecord, send: Send) -> Send:
        """``send`` that puts ``x-request-id`` on the response head, for the answers the
        gateway writes itself (a forwarded answer gets it from the proxy, with no
        wrapper around each of its messages)."""
        header = record.response_header()

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        return sender

    def acquired(self, record: RequestRecord, replica: Replica, begun: float, waited: bool) -> None:
        """A replica slot was taken at pool-clock time now; the request asked at
        ``begun``. A cold start that ended while it waited is the one it waited on."""
        now = self.clock()
        record.queue_wait = now - begun
        if replica.tier is not None:
            record.tier, record.role = replica.tier.key, replica.tier.role.value
        cold = replica.cold_start
        if waited and cold is not None and cold.finished_at >= begun:
            record.cold_start = cold
        if record.trace.traced:
            record.trace.queue_wait(begun, now, record.cold_start, replica.started, replica.tier)

    def shed(self, record: RequestRecord) -> None:
        """A shed request ended (429 at once): its span, if any, ends; no usage, history
        or access line (the gateway counts it in ``edgeinfer_requests_total``)."""
        if record.trace.traced:
            record.trace.finish(429)

    def finish(self, record: RequestRecord, model_label: str) -> float:
        """The request ended: ``model_label`` is its model as a metric label. Returns
        its latency in seconds."""
        record.latency = latency = time.perf_counter() - record.started
        record.model = model_label
        if record.trace.traced:
            record.trace.model(model_label, record.path, record.key)
            record.trace.finish(
                record.status,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                ttft=record.ttft,
            )
        self.ledger.record(
            record.key,
            model_label,
            record.status,
            record.input_tokens,
            record.output_tokens,
            record.started_epoch,
        )
        self.history.request(model_label, latency, record.ttft, record.status)
        access_log.write(record)
        return latency
