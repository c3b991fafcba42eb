"""What a tier's p95 will be at a load (pure): the warm p95 at the concurrency each replica
carries plus the p95 of queueing (Erlang C, M/M/c), with as few replicas as keep
utilization under the configured ceiling."""

from __future__ import annotations

import math

from runtime.placement.policy_config import PolicyConfig
from runtime.placement.profiles import Profile
from runtime.spec.model import ModelSpec

__all__ = ["erlang_c_wait_p95", "predict"]


def erlang_c_wait_p95(servers: int, offered: float, service_s: float) -> float:
    """95th percentile of the wait in an M/M/c queue (seconds): ``servers`` = c,
    ``offered`` = arrival rate x mean service time (Erlangs). inf when unstable."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return math.inf
    # Erlang C through the Erlang B recursion (stable for large c).
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    c = b / (1 - rho + rho * b)
    if c <= 0.05:
        return 0.0
    drain = (servers - offered) / service_s  # c*mu - lambda
    return math.log(c / 0.05) / drain


def predict(
    spec: ModelSpec, profile: Profile, load_rps: float, max_replicas: int, cfg: PolicyConfig
) -> tuple[float, int, float | None, str]:
    """(p95 ms, replicas, tokens/s, note) at ``load_rps`` with the fewest replicas that
    keep utilization under the ceiling; p95 is inf when even ``max_replicas`` cannot."""
    service_s = profile.service_ms / 1000
    per_replica = max(1, math.floor(profile.parallelism))
    if spec.scaling.container_concurrency:
        per_replica = min(per_replica, spec.scaling.container_concurrency)
    offered = load_rps * service_s
    needed = max(1, math.ceil(offered / (per_replica * cfg.max_utilization)))
    # The fewest replicas (from those the utilization ceiling asks for) whose
    # predicted p95 meets the goal; a long M/M/c tail may ask for more.
    replicas = min(needed, max_replicas)
    while True:
        wait = erlang_c_wait_p95(replicas * per_replica, offered, service_s)
        busy = max(1.0, offered / replicas)
        p95 = profile.p95_at(busy) + wait * 1000
        if p95 <= spec.latency.p95_ms or replicas >= min(max_replicas, needed + 64):
            break
        replicas += 1
    note = ""
    if needed > max_replicas:
        note = f"needs {needed} replicas for {load_rps:g} req/s, {max_replicas} allowed"
    tps = profile.tokens_per_s
    if tps is not None and busy > 1 and len(profile.points) > 1:
        last = profile.points[-1]
        if last.tokens_per_s is not None:
            f = min(1.0, (busy - 1) / max(1, last.concurrency - 1))
            tps = tps + f * (last.tokens_per_s - tps)
    return p95, replicas, tps, note
