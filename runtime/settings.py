"""Typed settings read from the environment, in one place.

Nothing else in edgeinfer reads ``os.environ``; callers build a :class:`Settings`
with :meth:`Settings.from_env` (or directly, in tests) and pass it down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HOST_TOKEN_ENV", "Settings"]

# The WASM host's admin token, handed to it by the launcher that starts it.
HOST_TOKEN_ENV = "EDGEINFER_HOST_TOKEN"


class Settings(BaseModel):
    """Process-wide knobs.

    ``state_dir`` holds caches that can be rebuilt (ONNX graphs built from
    safetensors, assembled GGUF files, profiles); ``EDGEINFER_HOME`` overrides it.
    """

    model_config = ConfigDict(frozen=True)

    state_dir: Path = Path.home() / ".cache" / "edgeinfer"
    log_level: str = "info"
    # The WASM host's admin bearer token; never in a repr (nor so in a log line).
    host_token: str | None = Field(None, repr=False)
    # Measure models with no profile in the background (runtime.placement.autoprofile):
    # off when built directly, on in a process's settings (from_env) unless
    # EDGEINFER_MEASURE_MISSING=0, so `edgeinfer serve` measures on a first start.
    measure_missing: bool = False
    otel: dict[str, str] = {}  # the OTEL_* variables (runtime.spec.telemetry reads them)
    # Cores this process's model may use (EDGEINFER_CPU_CORES, set by the supervisor
    # for its workers from its core budget); None: all of the machine's.
    cpu_cores: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("EDGEINFER_HOME"):
            values["state_dir"] = Path(env["EDGEINFER_HOME"]).expanduser()
        if env.get("EDGEINFER_CPU_CORES"):
            values["cpu_cores"] = env["EDGEINFER_CPU_CORES"]
        if env.get("EDGEINFER_LOG_LEVEL"):
            values["log_level"] = env["EDGEINFER_LOG_LEVEL"].lower()
        if env.get(HOST_TOKEN_ENV):
            values["host_token"] = env[HOST_TOKEN_ENV]
        values["measure_missing"] = env.get("EDGEINFER_MEASURE_MISSING", "1").lower() not in (
            "0",
            "false",
            "no",
            "off",
        )
        values["otel"] = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        return cls(**values)

    @staticmethod
    def cores_environ(cores: int) -> dict[str, str]:
        """The environment of a worker process given ``cores`` (read back by from_env)."""
        return {**os.environ, "EDGEINFER_CPU_CORES": str(cores)}

    def threads(self, requested: int | None) -> int:
        """Compute threads for a model: ``options.threads``, else every core given."""
        return requested or self.cpu_cores or os.cpu_count() or 1

    @property
    def artifact_cache(self) -> Path:
        return self.state_dir / "artifacts"
