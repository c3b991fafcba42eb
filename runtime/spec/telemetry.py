"""The ``telemetry:`` section of a config file: OpenTelemetry traces, off by default.

Tracing is on when ``enabled: true`` here, or (``enabled`` left out) when the standard
OpenTelemetry environment asks for an OTLP exporter: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER=otlp``.
``OTEL_SDK_DISABLED=true`` turns it off whatever the file says. The same section is
read by the gateway and by every worker it starts, so one trace follows a request
across processes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from runtime.spec.frozen import Frozen

__all__ = ["TelemetryConfig"]


class TelemetryConfig(Frozen):
    """Where spans go and what they may hold. Prompt text is never recorded unless
    ``capture_prompts`` is set; API key secrets never are."""

    enabled: bool | None = Field(
        None, description="true/false; left out: on when the OTEL_* environment asks for OTLP"
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="OTLP/HTTP base URL (…/v1/traces is added); else OTEL_EXPORTER_OTLP_* ",
    )
    service_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="else OTEL_SERVICE_NAME"
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="root traces kept (parent-based)")
    capture_prompts: bool = Field(False, description="record prompt text on inference spans")
    export_delay_ms: int = Field(
        1000, ge=10, le=60_000, description="batch export period (OTEL_BSP_SCHEDULE_DELAY's)"
    )

    def active(self, environ: Mapping[str, str]) -> bool:
        """Whether traces are recorded and exported, given the process environment."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if self.enabled is not None:
            return self.enabled
        exporters = {e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
        return (
            "otlp" in exporters
            or bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            or bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        )
