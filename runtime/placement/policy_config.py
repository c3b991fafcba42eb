"""The manager's settings: the ``manager:`` section of a config file (:class:`PolicyConfig`)
and the prices it weighs (:class:`CostModel`)."""

from __future__ import annotations

from pydantic import Field, ValidationError

from runtime.errors import ConfigError
from runtime.spec.frozen import Frozen
from runtime.spec.knative_bounds import KNATIVE_BOUNDS
from runtime.spec.model import ModelConfig

__all__ = ["CostModel", "PolicyConfig", "policy_config"]


class CostModel(Frozen):
    """Prices (any currency) per second of a resource held."""

    gpu_second: float = Field(0.0008, ge=0, description="one whole GPU (~2.9/hour)")
    cpu_second: float = Field(0.000011, ge=0, description="one CPU core (~0.04/hour)")
    gib_second: float = Field(0.0000014, ge=0, description="one GiB of host memory")


class PolicyConfig(Frozen):
    """The ``manager:`` section of a config file."""

    cost: CostModel = CostModel()
    default_rps: float = Field(1.0, gt=0, description="expected load when none is observed")
    expected_rps: dict[str, float] = Field(default_factory=dict, description="per model")
    max_utilization: float = Field(0.8, gt=0, lt=1, description="plan replicas to stay under")
    gpu_reserve_mib: float = Field(512, ge=0, description="kept free on every GPU")
    cuda_context_mib: float = Field(300, ge=0, description="added to a model's GPU memory")
    gpu_speedup_generation: float = Field(10.0, gt=0, description="estimate without a profile")
    gpu_speedup_other: float = Field(4.0, gt=0, description="estimate without a profile")
    cuda_init_s: float = Field(2.0, ge=0, description="estimated CUDA start-up per replica")
    replan_window_s: float = Field(30.0, gt=0, description="a breach must last this long")
    replan_cooldown_s: float = Field(60.0, ge=0, description="between two moves of a model")
    load_change_factor: float = Field(2.0, gt=1, description="observed/planned load to re-plan")
    min_gain: float = Field(0.2, ge=0, lt=1, description="cost saving needed to move")
    cover_cold_starts: bool = Field(
        True, description="a cold start that breaks the goal gets a bridge or a warm replica"
    )
    tick_seconds: float = Field(5.0, gt=0, le=3600, description="how often the manager looks")
    wasm_in_host: bool = Field(
        True,
        description="WASM-tier models run in the one shared WASM host (an instance per cold "
        "start, weights resident); false: a worker process each, priced as a native replica",
    )
    wasm_instance_start_ms: float = Field(
        10.0,
        ge=0,
        description="a cold start in the warm WASM host: a new instance from the snapshot "
        "(~0.2 ms) and the first touch of its pages (~8 ms, README's snapshot table)",
    )
    keep_alive_to_zero: bool = Field(
        True,
        description="a replica whose cold start fits the goal goes to zero "
        "shortest_keep_alive_s after its last request when that holds it at least min_gain "
        "less of the time than the scaling rule's idle period (rarely used models)",
    )
    shortest_keep_alive_s: float = Field(
        KNATIVE_BOUNDS["window"].low,
        ge=KNATIVE_BOUNDS["window"].low,
        le=3600,
        description="the keep-alive of such a replica: Knative's smallest stable window, "
        "with no scale-down delay, retention or grace after it",
    )
    wasm_host_share_mib: float = Field(
        4.0, ge=0, description="each model's share of the WASM host process's own memory"
    )


def policy_config(config: ModelConfig) -> PolicyConfig:
    try:
        return PolicyConfig.model_validate(config.manager)
    except ValidationError as exc:
        raise ConfigError.invalid(str(config.source), exc, "manager.") from None
