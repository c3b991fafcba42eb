"""Several models on one GPU: packing by memory, evicting the least recently used idle
model when a new one needs room, never over-committing a GPU's memory.

Pure functions over frozen snapshots: the GPUs as the inventory saw them and the
models the manager has placed on them (:class:`Resident`). The manager applies the
answer (stops the evicted models' GPU replicas, then starts the new one).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.placement.inventory import GpuInfo

__all__ = ["Fit", "Resident", "fit", "pick_victims"]


@dataclass(frozen=True)
class Resident:
    """A model holding GPU memory: on which GPU, how much, when it last served, and
    whether a request is in flight (a busy model is never evicted)."""

    model: str
    gpu: int
    memory_mib: float
    last_used: float
    busy: bool = False


@dataclass(frozen=True)
class Fit:
    """Where a model goes: ``gpu`` (None when no GPU can take it) after evicting
    ``evict`` (model names, least recently used first)."""

    gpu: int | None
    evict: tuple[str, ...] = ()
    reason: str = ""


def free_mib(
    gpu: GpuInfo, resident: tuple[Resident, ...], reserve_mib: float, mine_mib: float = 0.0
) -> float:
    """Memory a new model may take on ``gpu``: what is neither used nor reserved.
    Used is the larger of what the driver reports and what our placements account for:
    the driver's figure includes our loaded models (counting both would double them),
    our ledger includes models placed but not loaded yet. Hazard: memory another
    program takes on a GPU our models also fill is seen only once it exceeds ours.
    ``mine_mib`` is what the model being placed already holds there (the driver counts
    it as used; it is not in the way of itself)."""
    ours = sum(r.memory_mib for r in resident if r.gpu == gpu.index)
    used = max(gpu.memory_total_mib - gpu.memory_free_mib - mine_mib, ours)
    return gpu.memory_total_mib - used - reserve_mib


def pick_victims(
    resident: tuple[Resident, ...], gpu: int, short_mib: float
) -> tuple[Resident, ...] | None:
    """The least recently used idle models on ``gpu`` whose memory covers ``short_mib``,
    or None when evicting every idle model there would not be enough."""
    idle = sorted((r for r in resident if r.gpu == gpu and not r.busy), key=lambda r: r.last_used)
    chosen: list[Resident] = []
    freed = 0.0
    for r in idle:
        if freed >= short_mib:
            break
        chosen.append(r)
        freed += r.memory_mib
    return tuple(chosen) if freed >= short_mib else None


def fit(
    gpus: tuple[GpuInfo, ...],
    resident: tuple[Resident, ...],
    need_mib: float,
    *,
    reserve_mib: float = 0.0,
    model: str | None = None,
) -> Fit:
    """A GPU for a model needing ``need_mib``. Prefers a GPU with room already (the
    fullest that fits: best fit keeps large holes for large models), then the one
    that needs the fewest evictions. ``model`` already resident is not counted twice."""
    others = tuple(r for r in resident if r.model != model)
    if not gpus:
        return Fit(None, reason="no GPU")
    mine = {r.gpu: r.memory_mib for r in resident if r.model == model}
    rooms = [(free_mib(g, others, reserve_mib, mine.get(g.index, 0.0)), g) for g in gpus]
    fitting = [(room, g) for room, g in rooms if room >= need_mib]
    if fitting:
        room, g = min(fitting, key=lambda x: x[0])
        return Fit(g.index, reason=f"GPU{g.index} has {room:.0f} MiB free")
    options = []
    for room, g in rooms:
        if g.memory_total_mib - reserve_mib < need_mib:
            continue  # too big for this GPU even when empty
        victims = pick_victims(others, g.index, need_mib - room)
        if victims is not None:
            options.append((len(victims), g, victims))
    if options:
        _, g, victims = min(options, key=lambda x: x[0])
        names = tuple(v.model for v in victims)
        return Fit(
            g.index,
            evict=names,
            reason=f"GPU{g.index} after evicting idle {', '.join(names)} (least recently used)",
        )
    largest = max(room for room, _ in rooms)
    return Fit(
        None,
        reason=f"GPU full: needs {need_mib:.0f} MiB, at most {max(largest, 0):.0f} MiB free "
        "and no idle model to evict frees enough",
    )
