"""The one error tree of edgeinfer.

Every failure a caller can see is an :class:`EdgeInferError` carrying its HTTP status
and a short machine-readable code. Foreign errors (onnxruntime, llama.cpp, pydantic,
wasmtime) are translated into this tree where they enter; the HTTP layer renders it
in the shape of the API that was called (see ``runtime.api.openai`` and
``runtime.api.oip``) and never has to guess a status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "BadInput",
    "ConfigError",
    "ContextOverflow",
    "DeadlineExceeded",
    "EdgeInferError",
    "GuestLinkError",
    "GuestOutOfMemory",
    "GuestTrap",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RuntimeFailure",
    "RuntimeUnavailable",
    "Unauthorized",
    "UnsupportedTask",
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


class PayloadTooLarge(BadInput):
    """The request body is larger than the configured maximum (413)."""

    status = 413
    code = "payload_too_large"


class ModelNotFound(EdgeInferError):
    """No model of that name is configured here (404)."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"


class ModelNotReady(EdgeInferError):
    """The model exists but is not loaded yet or is unloading (503)."""

    status = 503
    code = "model_not_ready"


class Overloaded(EdgeInferError):
    """Too many requests in flight or queued; retry later (503 with Retry-After)."""

    status = 503
    code = "overloaded"


class DeadlineExceeded(EdgeInferError):
    """The request's deadline passed before it could be served (504)."""

    status = 504
    code = "deadline_exceeded"


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
        problems = "; ".join(
            f"{prefix}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        return cls(f"{where}: {problems}")


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
