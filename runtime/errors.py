"""The one error tree of edgeinfer.

Every failure a caller can see is an :class:`EdgeInferError` carrying its HTTP status
and a short machine-readable code. Foreign errors (onnxruntime, llama.cpp, pydantic,
wasmtime) are translated into this tree where they enter; the HTTP layer renders it
in the shape of the API that was called (see ``runtime.api.openai`` and
``runtime.api.oip``) and never has to guess a status. Every error class lives here::

    EdgeInferError (500)
    ├── BadInput (400)
    │   ├── ContextOverflow (400)
    │   ├── UnsupportedTask (400)
    │   └── PayloadTooLarge (413)
    ├── Unauthorized (401)
    ├── PermissionDenied (403)
    ├── RateLimited (429)
    │   ├── QuotaExceeded (429)
    │   └── Shed (429)
    ├── MethodNotAllowed (405)
    ├── HttpStatus (the HTTP status it carries)
    ├── ModelNotFound (404)
    │   └── RouteNotFound (404)
    ├── ModelNotReady (503)
    │   └── ShuttingDown (503)
    ├── Overloaded (503)
    ├── DeadlineExceeded (504)
    ├── ReplicaFailed (502)
    │   ├── GatewayUnreachable (502)
    │   ├── ResponseCut (502, or the status of what cut it)
    │   ├── ReplicaDied (502)
    │   ├── ReplicaUnreachable (502)
    │   └── UpstreamError (502)
    │       ├── BadResponseHead (502)
    │       ├── ReplicaLost (502)
    │       └── StrayResponse (502)
    ├── RuntimeFailure (500)
    │   ├── GuestTrap (500)
    │   │   └── GuestOutOfMemory (500)
    │   └── GuestLinkError (500)
    │       └── SnapshotUnsupported (500)
    ├── RuntimeUnavailable (501)
    ├── ConfigError (500)
    │   └── GraphConversionError (500)
    └── KubeError (the Kubernetes API's status, else 502)
        └── ApplyConflict (409)

One exception class lives elsewhere on purpose: ``runtime.backends.wasm.wasi_nn.types.
NnError`` is not an error anyone is told of but a wasi-nn status code in flight from
deep in the host's handler to the host function's return value (the guest receives the
code; the message goes only to the log), so it never reaches this tree's renderers.

:func:`describe_validation` is the one wording of a pydantic validation error, for
request bodies (400) and config files alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ApplyConflict",
    "BadInput",
    "BadResponseHead",
    "ConfigError",
    "ContextOverflow",
    "DeadlineExceeded",
    "EdgeInferError",
    "GatewayUnreachable",
    "GraphConversionError",
    "GuestLinkError",
    "GuestOutOfMemory",
    "GuestTrap",
    "HttpStatus",
    "KubeError",
    "MethodNotAllowed",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "ReplicaDied",
    "ReplicaFailed",
    "ReplicaLost",
    "ReplicaUnreachable",
    "ResponseCut",
    "RouteNotFound",
    "RuntimeFailure",
    "RuntimeUnavailable",
    "Shed",
    "ShuttingDown",
    "SnapshotUnsupported",
    "StrayResponse",
    "Unauthorized",
    "UnsupportedTask",
    "UpstreamError",
    "describe_validation",
    "field_problem",
]


class EdgeInferError(Exception):
    """Root of every error edgeinfer reports to a caller.

    ``status`` is the HTTP status the error maps to, ``code`` a stable snake_case
    identifier clients can switch on, ``retry_after`` (seconds) is sent as the
    ``Retry-After`` header when set; ``param`` names the request field at fault, when
    one is (OpenAI's ``error.param``).
    """

    status: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param


class BadInput(EdgeInferError):
    """The request is malformed or asks for something the model cannot do (400)."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class ContextOverflow(BadInput):
    """Prompt plus requested output does not fit the model's context window (400)."""

    code = "context_length_exceeded"


class UnsupportedTask(BadInput):
    """The route's task (chat, embeddings...) is not what this model serves (400)."""

    code = "unsupported_task"


class Unauthorized(EdgeInferError):
    """No API key, or one that is not known (401)."""

    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class PermissionDenied(EdgeInferError):
    """A known key that may not use this model or route (403)."""

    status = 403
    code = "permission_denied"
    error_type = "permission_error"


class RateLimited(EdgeInferError):
    """The key's request rate is used up; ``retry_after`` says when to come back (429)."""

    status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"


class QuotaExceeded(RateLimited):
    """The key's token quota (per minute or per day) is used up; the message names it
    and ``retry_after`` says when its window ends (429)."""

    code = "quota_exceeded"


class Shed(RateLimited):
    """A sheddable request refused because its model is saturated (429, the same code
    as any rate limit): the gateway answers it with a pre-built response and counts it,
    nothing more, so that refusing a flood stays cheap. ``model``: the model's name."""

    def __init__(self, message: str, *, model: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.model = model


class MethodNotAllowed(EdgeInferError):
    """The route exists but not for this method; ``allow`` lists the methods it takes
    and is sent as the ``Allow`` header (405)."""

    status = 405
    code = "method_not_allowed"
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class HttpStatus(EdgeInferError):
    """An HTTP-level error: from Starlette's routing (404 unknown route, 405 wrong
    method...) or from the gateway's server refusing a request (400, 408, 431...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        self.error_type = "invalid_request_error"


class PayloadTooLarge(BadInput):
    """The request body is larger than the configured maximum (413)."""

    status = 413
    code = "payload_too_large"


class ModelNotFound(EdgeInferError):
    """No model of that name is configured here (404)."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"


class RouteNotFound(ModelNotFound):
    """No route at that path (404). A kind of :class:`ModelNotFound` (the gateway reads
    the model from the path), told apart so a made-up path never becomes a label."""

    code = "not_found"


class ModelNotReady(EdgeInferError):
    """The model exists but is not loaded yet or is unloading (503)."""

    status = 503
    code = "model_not_ready"


class ShuttingDown(ModelNotReady):
    """The gateway is shutting down: no new requests, and a stream still running when
    its grace period ends is cut with this code (503)."""

    code = "shutting_down"


class Overloaded(EdgeInferError):
    """Too many requests in flight or queued; retry later (503 with Retry-After)."""

    status = 503
    code = "overloaded"


class DeadlineExceeded(EdgeInferError):
    """The request's deadline passed before it could be served (504)."""

    status = 504
    code = "deadline_exceeded"


class ReplicaFailed(EdgeInferError):
    """The replica went away or answered garbage while serving the request (502)."""

    status = 502
    code = "replica_failed"


class ResponseCut(ReplicaFailed):
    """The replica failed after the answer's status line had gone to the client: no
    error response can follow, so the server aborts the client's connection (no final
    chunk, no complete ``Content-Length``) and the client sees the answer is cut.
    ``status`` is the request's real outcome for metrics (504 for a deadline, 503 for a
    shutdown; 502 by default), though the client already has another status line."""

    code = "response_cut"

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class ReplicaDied(ReplicaFailed):
    """The replica's connection ended in the middle of an answer (it died, or was
    killed as unhealthy): the stream's error event carries this code."""

    code = "replica_died"


class ReplicaUnreachable(ReplicaFailed):
    """No byte of the request reached the replica (connection refused, or closed before
    the request was written): safe to send to another replica."""

    code = "replica_unreachable"


class GatewayUnreachable(ReplicaFailed):
    """``edgeinfer top`` could not read a gateway's ``/admin/state``: unreachable, the
    key refused, or not an edgeinfer gateway (502)."""

    code = "gateway_unreachable"


class UpstreamError(ReplicaFailed):
    """The connection to a replica failed or closed before its response was complete
    (the gateway's HTTP client; 502)."""

    code = "upstream_error"


class BadResponseHead(UpstreamError):
    """A replica's response head is past the gateway's limits, or is one nobody could
    have asked for (a protocol switch). Raised inside the response parser's callbacks
    to stop parsing; the client reports it as an :class:`UpstreamError` (502)."""

    code = "bad_response_head"


class ReplicaLost(UpstreamError):
    """The connection to a replica ended (reset, or closed) after a request safe to send
    twice was written and before the head of its answer was complete: the client has
    no byte of an answer. The gateway sends it to another replica when this one is
    known dead (its process exited); otherwise it is this 502."""

    code = "replica_lost"


class StrayResponse(UpstreamError):
    """Bytes after a complete response that no request asked for: raised inside the
    response parser to stop it; the connection is discarded, never reused (502)."""

    code = "stray_response"


class RuntimeFailure(EdgeInferError):
    """The runtime failed while serving a valid request (500)."""

    status = 500
    code = "runtime_failure"


class RuntimeUnavailable(EdgeInferError):
    """A runtime or device was asked for that this host cannot provide (e.g. CUDA)."""

    status = 501
    code = "runtime_unavailable"


class ConfigError(EdgeInferError):
    """A model configuration file is invalid.

    The message names the file, the model and the field, and what is allowed there.
    """

    status = 500
    code = "config_error"

    @classmethod
    def invalid(cls, where: str, exc: ValidationError, prefix: str = "") -> ConfigError:
        """``where: field: what is wrong; ...`` for a section that failed validation,
        each field's dotted path after ``prefix`` (the section's own name, if any)."""
        return cls(f"{where}: {describe_validation(exc, whole='(top)', prefix=prefix)}")


class GraphConversionError(ConfigError):
    """An ONNX model a compute package converts (``options.convert: onnx``) uses what the
    WASM engine's graph program cannot express; the message names the node (500)."""

    code = "graph_conversion_error"


class GuestTrap(RuntimeFailure):
    """A WebAssembly guest trapped (unreachable, out-of-bounds access, stack overflow...)
    or exited with a failure; the message carries the trap's own text (500)."""

    code = "guest_trap"


class GuestOutOfMemory(GuestTrap):
    """A guest ran into its memory limit (store limits) and failed (500)."""

    code = "guest_out_of_memory"


class GuestLinkError(RuntimeFailure):
    """A guest cannot be instantiated: it imports something the host does not provide,
    or is not valid WebAssembly. Reported at load, before any call (500)."""

    code = "guest_link_error"


class SnapshotUnsupported(GuestLinkError):
    """A guest's initialised state cannot be captured as a module (it imports its memory,
    has passive data segments, a mutable global of a reference type...); the message
    names what. Reported at load (500); a compute package with ``snapshot: false`` runs
    such a guest from its plain module."""

    code = "snapshot_unsupported"


class KubeError(EdgeInferError):
    """The Kubernetes API refused or failed a request; ``status`` is the API's."""

    code = "kubernetes_error"

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class ApplyConflict(KubeError):
    """Server-side apply found fields another field manager owns (409)."""

    code = "apply_conflict"

    def __init__(self, message: str, fields: list[tuple[str, str]]) -> None:
        super().__init__(message, status=409)
        self.fields = fields  # (field path, owning manager)


def field_problem(loc: Sequence[str | int], msg: str, whole: str = "body", prefix: str = "") -> str:
    """One problem as ``field 'a.b': what is allowed``; ``whole`` names the validated
    object itself when ``loc`` is empty, ``prefix`` the section the object sits in."""
    field = prefix + ".".join(str(p) for p in loc) if loc else whole
    return f"field {field!r}: {msg.removeprefix('Value error, ')}"


def describe_validation(exc: ValidationError, whole: str = "body", prefix: str = "") -> str:
    """A pydantic error as one clause per field (see :func:`field_problem`)."""
    return "; ".join(
        field_problem(e["loc"], e["msg"], whole, prefix) for e in exc.errors(include_url=False)
    )
