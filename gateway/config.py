"""The gateway's settings: the ``gateway:`` section of a config file.

Like Knative's cluster-wide ``config-autoscaler``, these hold what is not per model:
how often the autoscaler runs, the scale-to-zero grace period, the queue bound, and
authentication and limits (``auth:``, see ``gateway.auth``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth import AuthConfig
from runtime.errors import ConfigError
from runtime.spec.model import ModelConfig

__all__ = ["GatewayConfig", "gateway_config"]


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auth: AuthConfig = AuthConfig()
    tick_seconds: float = Field(1.0, gt=0, le=60, description="autoscaler period")
    scale_to_zero_grace_seconds: float = Field(
        30.0, ge=0, le=3600, description="Knative's scale-to-zero-grace-period"
    )
    max_queue: int = Field(100, ge=0, description="requests waiting per model, then 503")
    ready_timeout_seconds: float = Field(300.0, gt=0, description="replica start limit")
    timeout_header: str = Field(
        "x-edgeinfer-timeout", description="request header giving a shorter deadline (s)"
    )


def gateway_config(config: ModelConfig) -> GatewayConfig:
    """Validate the ``gateway:`` section; ConfigError names the file and the field."""
    try:
        return GatewayConfig.model_validate(config.gateway)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"])
            lines.append(
                f"{config.source}: gateway: field {field!r}: "
                f"{err['msg'].removeprefix('Value error, ')}"
            )
        raise ConfigError("\n".join(lines)) from None
