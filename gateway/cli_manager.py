"""``edgeinfer plan`` and ``edgeinfer profile``: the runtime manager on the command line.

``profile`` measures each eligible runtime x device of the models on this host and
stores the profiles under the state folder; ``plan`` shows, per model, where the
manager would place it on an inventory (this host, a written ``--hardware`` file,
and/or a cluster's nodes) and why each other candidate was rejected.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from runtime.backends.registry import registered_runtimes
from runtime.errors import EdgeInferError
from runtime.placement.inventory import Inventory, load_hardware, probe_cluster, probe_local
from runtime.placement.policy import PlacementDecision, plan, policy_config
from runtime.placement.profiler import profile_config
from runtime.placement.profiles import ProfileStore
from runtime.settings import Settings
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelConfig, load_config
from runtime.spec.placement import Tier

__all__ = ["plan_command", "profile_command"]

err = Console(stderr=True)


def _fail(exc: EdgeInferError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    return typer.Exit(2)


def profile_command(
    config: Path | None = typer.Option(None, "--config", help="Model config (YAML)."),
    model: list[str] = typer.Option([], "--model", help="Only this model (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Measure again even if unchanged."),
    requests: int | None = typer.Option(None, "--requests", min=1, help="Requests per point."),
) -> None:
    """Measure each eligible runtime x device of the models (cold start, p50/p95 at
    concurrency 1 and at the target, tokens/s, memory); stored and reused."""
    settings = Settings.from_env()
    try:
        cfg = load_config(config)
    except EdgeInferError as exc:
        raise _fail(exc) from None
    store = ProfileStore(settings.state_dir / "profiles")
    table = Table(
        "model",
        "tier",
        "status",
        "cold start",
        "first start",
        "p50/p95 @1",
        "p95 @target",
        "tokens/s",
        "memory",
        "note",
    )

    async def run() -> None:
        async for o in profile_config(
            cfg, store, settings, models=model or None, force=force, requests=requests
        ):
            p = o.profile
            if p is None:
                table.add_row(o.model, o.tier, o.status, "", "", "", "", "", "", o.reason)
                err.print(f"{o.model} {o.tier}: {o.status} ({o.reason})", highlight=False)
                continue
            first, last = p.points[0], p.points[-1]
            phases = " ".join(f"{k} {v * 1000:.0f}" for k, v in p.cold_start.items())
            table.add_row(
                o.model,
                o.tier,
                o.status,
                f"{p.cold_start_s * 1000:.0f} ms ({phases})",
                "-" if p.first_start_s is None else f"{p.first_start_s * 1000:.0f} ms",
                f"{first.p50_ms:.1f}/{first.p95_ms:.1f} ms",
                f"{last.p95_ms:.1f} ms @{last.concurrency}" if len(p.points) > 1 else "-",
                f"{p.tokens_per_s:.1f}" if p.tokens_per_s else "-",
                f"{p.memory_mib:.0f} MiB (rss {p.rss_mib:.0f})",
                o.reason or p.note,
            )
            err.print(f"{o.model} {o.tier}: {o.status}", highlight=False)

    try:
        asyncio.run(run())
    except EdgeInferError as exc:
        raise _fail(exc) from None
    Console(width=200).print(table)


def inventory_for(
    hardware: Path | None,
    kubeconfig: str | None,
    context: list[str],
    clusters: list[ClusterSpec] | None = None,
) -> Inventory:
    """This host, or the written inventory; plus the nodes of each cluster context and
    of each cluster profile of the config (``clusters``). A profile that is an edge or
    CPU-only site contributes its nodes' CPUs only: it never gets a GPU tier."""
    inv = load_hardware(hardware) if hardware else probe_local()
    nodes = list(inv.nodes)
    if kubeconfig or context:
        for ctx in context or [None]:  # type: ignore[list-item]
            nodes += probe_cluster(kubeconfig=kubeconfig, context=ctx)
    for c in clusters or []:
        found = probe_cluster(kubeconfig=c.kubeconfig, context=c.context, cluster=c.name)
        if not c.has_gpu:
            found = tuple(n.model_copy(update={"gpus": 0}) for n in found)
        nodes += found
    return inv.model_copy(update={"nodes": tuple(nodes)})


def decide_all(
    cfg: ModelConfig, inv: Inventory, settings: Settings, rps: dict[str, float] | None = None
) -> tuple[PlacementDecision, ...]:
    store = ProfileStore(settings.state_dir / "profiles")
    profiles = {m.name: store.for_model(m, cfg.base_dir) for m in cfg.models if m.runtimes}
    policy = policy_config(cfg)
    if rps:
        policy = policy.model_copy(update={"expected_rps": {**policy.expected_rps, **rps}})
    return plan(cfg, profiles, inv, policy, time.time(), available=registered_runtimes())


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return "overloaded" if math.isinf(value) else f"{value:.1f} ms"


def _rates(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, _, rate = pair.partition("=")
        try:
            out[name] = float(rate)
        except ValueError:
            raise typer.BadParameter(f"--rps wants MODEL=REQUESTS_PER_S, got {pair!r}") from None
        if out[name] <= 0:
            raise typer.BadParameter(f"--rps {pair!r}: the rate must be > 0")
    return out


def _tier(t: Tier) -> str:
    """A tier as the plan shows it: key, role, warm minimum, the manager's keep-alive."""
    extra = f", {t.min_scale} warm" if t.min_scale else ""
    if t.keep_alive_s is not None:
        extra += f", to zero {t.keep_alive_s:g} s after a request"
    return f"{t.key} ({t.role.value}{extra})"


def plan_command(
    config: Path | None = typer.Option(None, "--config", help="Model config (YAML)."),
    hardware: Path | None = typer.Option(
        None, "--hardware", help="Describe the inventory instead of probing this host."
    ),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="Add a cluster's nodes."),
    clusters: bool = typer.Option(
        False, "--clusters", help="Plan onto the nodes of the config's clusters."
    ),
    context: list[str] = typer.Option([], "--context", help="kubeconfig context (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of tables."),
    rps: list[str] = typer.Option(
        [], "--rps", help="Expected load MODEL=REQ_PER_S (repeatable; overrides the config)."
    ),
) -> None:
    """Where each model would run, every candidate's predicted p95, tokens/s and cost,
    and why each other candidate was rejected."""
    settings = Settings.from_env()
    try:
        cfg = load_config(config)
        inv = inventory_for(hardware, kubeconfig, context, cfg.clusters if clusters else None)
        rates = _rates(rps)
        unknown = sorted(set(rates) - {m.name for m in cfg.models})
        if unknown:
            raise typer.BadParameter(f"--rps: no model {unknown[0]!r} in the config")
        decisions = decide_all(cfg, inv, settings, rates)
    except EdgeInferError as exc:
        raise _fail(exc) from None
    if as_json:
        doc = {"inventory": inv.model_dump(mode="json"), "models": [d.as_dict() for d in decisions]}
        typer.echo(json.dumps(doc, indent=2))
        return
    out = Console(width=200)
    out.print(f"[bold]inventory[/bold] ({inv.source}): {inv.describe()}", highlight=False)
    for d in decisions:
        tiers = " + ".join(_tier(t) for t in d.placement.tiers)
        mark = "" if d.goal_met else " [red]GOAL NOT MET[/red]"
        out.print(f"\n[bold]{d.model}[/bold] -> {tiers}{mark}", highlight=False)
        out.print(f"  {d.reason}", highlight=False)
        table = Table(
            "candidate",
            "profile",
            "p95 (pred.)",
            "cold start",
            "tokens/s",
            "replicas",
            "cost/hour",
            "verdict",
            "why",
        )
        for c in d.candidates:
            table.add_row(
                c.key,
                c.source,
                _ms(c.predicted_p95_ms),
                "-" if c.cold_start_ms is None else f"{c.cold_start_ms:.0f} ms",
                "-" if c.tokens_per_s is None else f"{c.tokens_per_s:.1f}",
                str(c.replicas or "-"),
                "-" if c.cost_per_hour is None else f"{c.cost_per_hour:.4f}",
                c.verdict,
                c.reason if c.verdict == "rejected" else "",
            )
        out.print(table)
