"""Where a model runs: the manager's answer, read by the supervisor, the gateway and
the Knative renderer.

A :class:`Placement` is one model's set of :class:`Tier` s. The first tier is the
primary; any further tier with ``role="bridge"`` serves while the primary starts from
zero (DESIGN.md, "Cold start as a scheduling signal"). ``cluster`` is None for this
machine (embedded), else the name of a cluster in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runtime.spec.model import RuntimeName

__all__ = ["CUDA_CAPABLE", "DEVICE_CHOICES", "Device", "Placement", "Tier", "TierRole"]


class Device(StrEnum):
    """What a replica computes on."""

    CPU = "cpu"
    CUDA = "cuda"


# What a worker's ``--device`` takes: a device, or ``auto`` (CUDA where this host has a
# GPU and the runtime's build can use it; see ``runtime.backends.registry``).
DEVICE_CHOICES: tuple[str, ...] = ("auto", *(d.value for d in Device))

# The runtimes that can run on a GPU at all (the WASM runtime is CPU only: DESIGN.md,
# "Runtimes"). Whether this host's build of one can is ``Runtime.supports_cuda``.
CUDA_CAPABLE: frozenset[RuntimeName] = frozenset({RuntimeName.LLAMA, RuntimeName.ONNX})


class TierRole(StrEnum):
    PRIMARY = "primary"
    BRIDGE = "bridge"


@dataclass(frozen=True)
class Tier:
    """One replica set of a model: which runtime, on which device, where."""

    runtime: RuntimeName
    device: Device
    cluster: str | None = None
    role: TierRole = TierRole.PRIMARY
    # Replicas kept warm on this tier whatever the traffic (the manager's answer to a
    # cold start that breaks the latency goal); None: the model's own min-scale.
    min_scale: int | None = None
    # Seconds a replica of this tier stays up after its last request before it goes to
    # zero, when the manager chose it (a rarely used model whose cold start fits its
    # goal goes to zero soon after each request); None: the model's scaling rule's.
    keep_alive_s: float | None = None

    @property
    def key(self) -> str:
        """A short stable name, ``<runtime>-<device>`` (e.g. ``llama-cuda``), usable in
        DNS labels and metric labels."""
        return f"{self.runtime.value}-{self.device.value}"


@dataclass(frozen=True)
class Placement:
    """A model's tiers, primary first, and why the manager chose them."""

    model: str
    tiers: tuple[Tier, ...]
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError(f"placement of {self.model!r} has no tier")
        if self.tiers[0].role is not TierRole.PRIMARY:
            raise ValueError(f"placement of {self.model!r}: the first tier must be primary")

    @property
    def primary(self) -> Tier:
        return self.tiers[0]

    @property
    def bridges(self) -> tuple[Tier, ...]:
        return tuple(t for t in self.tiers[1:] if t.role is TierRole.BRIDGE)
