"""What a tier costs per hour, priced by what it holds while it holds it (pure).

A native replica (a process on a CPU, or on a GPU) holds its cores, its memory and its
GPU share from the moment it starts until it has been idle for the model's idle
period (stable window + scale-down delay + retention), so a model that scales to zero
pays for the fraction of the hour a replica is up: with Poisson arrivals at ``rps``,
a replica is up when a request came within the idle period, ``1 - exp(-rps x idle)``
(:func:`held_fraction`), and all the time once it is kept warm.

A model in the WASM host (``manager.wasm_in_host``) holds no process: its compiled
code and its weights stay mapped in the shared host (one copy, shared by every
instance; priced per GiB-second all the hour, as resident), and an instance holds a
core only while it computes (``rps x service time``), plus its share of the host
process. That is what the WASM tier wins: a cold start in milliseconds, covered
without any warm replica, and nothing held per second but its weights; what it loses
is the slower warm compute, which the latency check and the compute term price.
"""

from __future__ import annotations

import math

from runtime.spec.model import ModelSpec

__all__ = ["held_fraction", "idle_seconds", "in_host_cost_per_s", "replica_cost_per_s"]


def idle_seconds(spec: ModelSpec) -> float:
    """How long a replica stays up after its last request before it scales to zero."""
    s = spec.scaling
    return s.window + s.scale_down_delay + s.scale_to_zero_pod_retention_period


def held_fraction(rps: float, idle_s: float, *, warm: bool) -> float:
    """The fraction of time a scale-to-zero replica is up at ``rps`` Poisson arrivals
    (1.0 when one is kept warm)."""
    if warm:
        return 1.0
    if rps <= 0:
        return 0.0
    return 1.0 - math.exp(-rps * idle_s)


def replica_cost_per_s(per_replica_s: float, replicas: int, held: float) -> float:
    """A native tier: ``replicas`` that each cost ``per_replica_s`` while up, up for
    the ``held`` fraction of the time (the first replica; the rest only under load,
    which ``replicas`` > 1 already says)."""
    if replicas <= 0:
        return 0.0
    return per_replica_s * (held + (replicas - 1))


def in_host_cost_per_s(
    *,
    rps: float,
    service_s: float,
    cores: float,
    weights_gib: float,
    host_share_gib: float,
    cpu_second: float,
    gib_second: float,
) -> float:
    """A model in the WASM host: cores only while computing, its weights and its share
    of the host process resident."""
    return rps * service_s * cores * cpu_second + (weights_gib + host_share_gib) * gib_second
