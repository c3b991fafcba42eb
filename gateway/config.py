"""The gateway's settings: the ``gateway:`` section of a config file.

Like Knative's cluster-wide ``config-autoscaler``, these hold what is not per model:
how often the autoscaler runs, the scale-to-zero grace period, the queue bound,
authentication and limits (``auth:``, see ``gateway.auth``), and the bounds the
gateway's HTTP server puts on every client connection (``server:``, see
``gateway.http1``).
"""

from __future__ import annotations

from pydantic import Field, ValidationError

from gateway.auth import AuthConfig
from gateway.traffic import TrafficConfig
from runtime.errors import ConfigError, field_problem
from runtime.scaling.health import HealthConfig
from runtime.spec.frozen import Frozen
from runtime.spec.model import ModelConfig

__all__ = ["GatewayConfig", "ServerConfig", "WasmHostConfig", "gateway_config"]


class ServerConfig(Frozen):
    """What a client connection may cost the gateway's HTTP server: time, head bytes,
    header fields, and how many connections are open at once. The defaults are the
    ones a deployment facing the internet would use."""

    keep_alive_seconds: float = Field(
        5.0, gt=0, le=3600, description="an idle connection (no request begun) is closed"
    )
    head_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="from a request's first byte to its head's end; 408"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="no body bytes while the app waits for them; 408"
    )
    min_body_bytes_per_second: float = Field(
        256.0,
        ge=0,
        le=1 << 30,
        description=(
            "after body_timeout_seconds of a body, its average rate must reach this "
            "(a trickle of bytes is no progress); 408; 0: no floor"
        ),
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="open client connections, then 503; unset: from the fd limit",
    )
    max_head_bytes: int = Field(
        64 * 1024, ge=1024, le=1024 * 1024, description="request line and headers; 431"
    )
    max_headers: int = Field(100, ge=8, le=1000, description="header fields; 431")


class WasmHostConfig(Frozen):
    """The one WASM host process that serves every WASM-tier model (issue 14)."""

    enabled: bool = Field(True, description="False: each WASM model in its own worker")
    keep_warm: bool = Field(
        True, description="start the host with the gateway when WASM models are configured"
    )
    memory_budget_mib: int | None = Field(
        None, ge=16, description="idle resident models above this are unloaded, LRU first"
    )


class GatewayConfig(Frozen):
    auth: AuthConfig = AuthConfig()
    server: ServerConfig = ServerConfig()
    traffic: TrafficConfig = TrafficConfig()
    wasm_host: WasmHostConfig = WasmHostConfig()
    health: HealthConfig = HealthConfig()  # liveness, progress, crash-loop back-off
    tick_seconds: float = Field(1.0, gt=0, le=60, description="autoscaler period")
    scale_to_zero_grace_seconds: float = Field(
        30.0, ge=0, le=3600, description="Knative's scale-to-zero-grace-period"
    )
    max_queue: int = Field(100, ge=0, description="requests waiting per model, then 503")
    max_keep_alive_seconds: float = Field(
        3600.0,
        ge=0,
        le=7 * 86400,
        description="the longest hold an Ollama keep_alive may ask for (-1 gets this); 0: refused",
    )
    ready_timeout_seconds: float = Field(300.0, gt=0, description="replica start limit")
    reserved_cores: int = Field(
        0, ge=0, le=4096, description="cores kept from replicas (runtime.scaling.cores)"
    )
    timeout_header: str = Field(
        "x-edgeinfer-timeout", description="request header giving a shorter deadline (s)"
    )


def gateway_config(config: ModelConfig) -> GatewayConfig:
    """Validate the ``gateway:`` section; ConfigError names the file and the field."""
    try:
        return GatewayConfig.model_validate(config.gateway)
    except ValidationError as exc:
        lines = [
            f"{config.source}: gateway: {field_problem(e['loc'], e['msg'], '(the section)')}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError("\n".join(lines)) from None
