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

How long a native replica stays up after a request is a choice too
(:func:`choose_keep_alive`). With Poisson arrivals at ``rps`` and a keep-alive of ``k``
seconds, each gap between requests holds the replica for ``min(gap, k)`` and, when the
gap is longer, for one cold start's load as well, so the held fraction is
``1 - exp(-rps k) + rps x cold x exp(-rps k)`` (:func:`held_fraction` with ``cold_s``).
Its slope in ``k`` is ``rps exp(-rps k) (1 - rps x cold)``: when a cold start is shorter
than the mean gap (``rps x cold < 1``) every second of keep-alive costs more than the
cold starts it saves, so a model whose cold start fits its latency goal is cheapest
sent to zero right after its request (Knative's smallest stable window and no
retention; Ollama's ``keep_alive: 0``); when requests come faster than a cold start,
keeping it up is cheaper.
"""

from __future__ import annotations

import math

from runtime.spec.model import ModelSpec

__all__ = [
    "choose_keep_alive",
    "held_fraction",
    "idle_seconds",
    "in_host_cost_per_s",
    "replica_cost_per_s",
]


def idle_seconds(spec: ModelSpec) -> float:
    """How long a replica stays up after its last request before it scales to zero."""
    s = spec.scaling
    return s.window + s.scale_down_delay + s.scale_to_zero_pod_retention_period


def held_fraction(rps: float, idle_s: float, *, warm: bool, cold_s: float = 0.0) -> float:
    """The fraction of time a scale-to-zero replica is up at ``rps`` Poisson arrivals
    when it stays up ``idle_s`` after a request and takes ``cold_s`` to start again
    (1.0 when one is kept warm)."""
    if warm:
        return 1.0
    if rps <= 0:
        return 0.0
    gone = math.exp(-rps * idle_s)  # the share of gaps longer than the keep-alive
    return min(1.0, 1.0 - gone + rps * cold_s * gone)


def choose_keep_alive(
    rps: float, cold_s: float, idle_s: float, shortest_s: float, min_gain: float
) -> float | None:
    """The keep-alive for a scale-to-zero replica whose cold start already fits its
    latency goal: ``shortest_s`` when that holds the replica at least ``min_gain`` less
    of the time than the rule's own ``idle_s`` (a rarely used model), else None (keep
    the rule's: a busy model, which a short keep-alive would only make start more
    often, for a saving too small to count)."""
    if shortest_s >= idle_s or rps <= 0:
        return None
    short = held_fraction(rps, shortest_s, warm=False, cold_s=cold_s)
    usual = held_fraction(rps, idle_s, warm=False, cold_s=cold_s)
    return shortest_s if short <= usual * (1 - min_gain) else None


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
