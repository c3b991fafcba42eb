"""``edgeinfer knative render|apply|status|delete``: the config as Knative Services on
one cluster or many (DESIGN.md, "Command line")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from knative.apply import Change
from knative.placement_checks import placements_from_plan
from knative.render import Rendered
from knative.targets import Overrides, render_config, select_clusters
from knative.yamldump import dump, dump_all
from runtime.errors import EdgeInferError
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelConfig, load_config

__all__ = ["app"]

app = typer.Typer(
    name="knative",
    help="Every model a scale-to-zero Knative Service, on one cluster or many.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

_CONFIG = typer.Option(None, "--config", help="Model config (YAML); the bundled models if omitted.")
_CLUSTER = typer.Option(
    None, "--cluster", help="Act on this cluster of the config (repeatable); default all."
)
_KUBECONFIG = typer.Option(None, "--kubeconfig", help="kubeconfig file (one cluster).")
_CONTEXT = typer.Option(None, "--context", help="kubeconfig context (one cluster).")
_NAMESPACE = typer.Option(None, "--namespace", "-n", help="Namespace instead of the profile's.")
_PLAN = typer.Option(
    None,
    "--plan",
    help="The manager's placements ('edgeinfer plan --json' output); default: each model "
    "on every chosen cluster, GPU primary + CPU/WASM bridge where the cluster has GPUs.",
)


def _fail(exc: EdgeInferError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _load(
    config: Path | None,
    clusters: list[str] | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
) -> tuple[ModelConfig, list[ClusterSpec]]:
    cfg = load_config(config)
    overrides = Overrides(tuple(clusters or ()), context, kubeconfig, namespace)
    return cfg, select_clusters(cfg, overrides)


def _rendered(
    cfg: ModelConfig, chosen: list[ClusterSpec], strict: bool, plan: Path | None
) -> dict[str, Rendered]:
    """Render, print every finding; exit 2 on errors (and on warnings when strict)."""
    placements = placements_from_plan(plan, tuple(chosen)) if plan is not None else None
    result = render_config(cfg, chosen, placements)
    errors = 0
    # One line per distinct problem, with every Service it applies to.
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for name, rendered in result.items():
        for finding in rendered.findings:
            key = (finding.severity, name, finding.message)
            grouped.setdefault(key, []).append(f"{finding.model}: {finding.field}")
    for (severity, name, message), where in grouped.items():
        colour = "red" if severity == "error" else "yellow"
        err.print(
            f"[{colour}]{severity}:[/{colour}] cluster {name!r}: {message}\n  at "
            + "\n  at ".join(where),
            highlight=False,
            soft_wrap=True,
        )
        errors += len(where) if severity == "error" or strict else 0
    if errors:
        err.print(f"[red]{errors} problem(s): nothing written or applied[/red]")
        raise typer.Exit(2)
    return result


@app.command()
def render(
    config: Path | None = _CONFIG,
    cluster: list[str] | None = _CLUSTER,
    kubeconfig: str | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    namespace: str | None = _NAMESPACE,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write DIR/<cluster>/*.yaml (stdout when omitted)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    plan: Path | None = _PLAN,
) -> None:
    """Write the Knative Services (and ConfigMaps, SpinApps) for the config's models."""
    try:
        cfg, chosen = _load(config, cluster, kubeconfig, context, namespace)
        result = _rendered(cfg, chosen, strict, plan)
    except EdgeInferError as exc:
        raise _fail(exc) from None
    if output is None:
        docs = [m for r in result.values() for m in r.manifests]
        typer.echo(dump_all(docs), nl=False)
        return
    for name, rendered in result.items():
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("[01]0-*.yaml"):
            old.unlink()  # what an earlier render wrote: a removed model leaves no file
        for manifest in rendered.manifests:
            order = "00" if manifest["kind"] == "ConfigMap" else "10"
            file = (
                folder / f"{order}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"
            )
            file.write_text(dump(manifest), encoding="utf-8")
        err.print(
            f"{len(rendered.manifests)} manifests for cluster {name!r} in {folder} "
            f"(kubectl apply -f {folder})",
            soft_wrap=True,
        )


def _show(change: Change, diffs: bool) -> None:
    colour = {"create": "green", "update": "yellow", "prune": "red", "delete": "red"}.get(
        change.action, "dim"
    )
    verb = (
        change.action
        if change.done or change.action in ("unchanged", "stale")
        else (f"would {change.action}")
    )
    note = " (use --prune to delete it)" if change.action == "stale" else ""
    out.print(f"[{colour}]{verb:>16}[/{colour}] {change.ref}{note}", highlight=False)
    if diffs and change.diff and change.action in ("create", "update"):
        out.print(change.diff.rstrip(), highlight=False, markup=False, soft_wrap=True)


@app.command()
def apply(
    config: Path | None = _CONFIG,
    cluster: list[str] | None = _CLUSTER,
    kubeconfig: str | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    namespace: str | None = _NAMESPACE,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would change; change nothing."
    ),
    diff: bool = typer.Option(True, "--diff/--no-diff", help="Print each change's diff."),
    prune: bool = typer.Option(
        False, "--prune", help="Delete edgeinfer's Services of models no longer in the config."
    ),
    force: bool = typer.Option(
        False, "--force-conflicts", help="Take over fields another field manager owns."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait until every Service is Ready."),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds --wait waits."),
    plan: Path | None = _PLAN,
    create_namespace: bool = typer.Option(
        False, "--create-namespace", help="Create the namespace if it does not exist."
    ),
) -> None:
    """Server-side apply (field manager 'edgeinfer'): create, update, or leave alone."""
    from knative.apply import apply_manifests, ensure_namespace
    from knative.kube import connect
    from knative.status import wait_for

    try:
        cfg, chosen = _load(config, cluster, kubeconfig, context, namespace)
        result = _rendered(cfg, chosen, False, plan)
        for spec in chosen:
            out.print(f"[bold]cluster {spec.name}[/bold] (namespace {spec.namespace})")
            conn = connect(spec)
            if create_namespace and (made := ensure_namespace(conn, dry_run=dry_run)):
                _show(made, False)
            changes = apply_manifests(
                conn,
                result[spec.name].manifests,
                dry_run=dry_run,
                prune=prune,
                force=force,
                progress=lambda c: _show(c, diff),
            )
            counts = {a: sum(c.action == a for c in changes) for a in ("create", "update")}
            out.print(
                f"{counts['create']} to create, {counts['update']} to update, "
                f"{sum(c.action == 'unchanged' for c in changes)} unchanged"
                + (" (dry run: nothing changed)" if dry_run else "")
            )
            if wait and not dry_run:
                names = [
                    m["metadata"]["name"]
                    for m in result[spec.name].manifests
                    if m["kind"] == "Service"
                ]
                with err.status(f"waiting for {len(names)} Service(s) to be Ready") as status:

                    def report(s: Any) -> None:
                        if not isinstance(s, str):
                            status.update(f"{s.name}: Ready={s.ready} {s.reason}")

                    left = wait_for(conn, names, until="ready", timeout=timeout, on_change=report)
                if left:
                    err.print(f"[red]not Ready after {timeout:g}s:[/red] {', '.join(sorted(left))}")
                    raise typer.Exit(1)
                out.print(f"all {len(names)} Service(s) Ready")
    except EdgeInferError as exc:
        raise _fail(exc) from None


@app.command()
def status(
    config: Path | None = _CONFIG,
    cluster: list[str] | None = _CLUSTER,
    kubeconfig: str | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    namespace: str | None = _NAMESPACE,
    model: str | None = typer.Option(None, "--model", help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per Service."),
) -> None:
    """Per model and tier: Ready, URL, latest revision and replicas."""
    from knative.kube import connect
    from knative.status import read_status

    try:
        _, chosen = _load(config, cluster, kubeconfig, context, namespace)
        rows = [s for spec in chosen for s in read_status(connect(spec), model)]
    except EdgeInferError as exc:
        raise _fail(exc) from None
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.__dict__))
        return
    if not rows:
        err.print("no Services owned by edgeinfer on the chosen cluster(s)")
        return
    table = Table("cluster", "model", "tier", "role", "ready")
    table.add_column("url", overflow="fold")
    table.add_column("revision", overflow="fold")
    table.add_column("replicas")
    for row in rows:
        colour = {"True": "green", "False": "red"}.get(row.ready, "yellow")
        ready = f"[{colour}]{row.ready}[/{colour}]" + (f" {row.reason}" if not row.is_ready else "")
        table.add_row(
            row.cluster,
            row.model,
            row.tier,
            row.role,
            ready,
            row.url or "-",
            row.revision or "-",
            row.replicas,
        )
    out.print(table)


@app.command()
def delete(
    config: Path | None = _CONFIG,
    cluster: list[str] | None = _CLUSTER,
    kubeconfig: str | None = _KUBECONFIG,
    context: str | None = _CONTEXT,
    namespace: str | None = _NAMESPACE,
    model: list[str] | None = typer.Option(None, "--model", help="Only this model (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the Services are gone."),
    timeout: float = typer.Option(120.0, "--timeout", min=1),
) -> None:
    """Delete what edgeinfer owns (its labels) and nothing else."""
    from knative.apply import delete_owned
    from knative.kube import connect
    from knative.status import wait_for

    try:
        _, chosen = _load(config, cluster, kubeconfig, context, namespace)
        for spec in chosen:
            conn = connect(spec)
            changes = delete_owned(
                conn, model or None, dry_run=dry_run, progress=lambda c: _show(c, False)
            )
            if not changes:
                out.print(f"nothing of edgeinfer's on cluster {spec.name!r}")
            if wait and not dry_run:
                names = [c.name for c in changes if c.kind == "Service"]
                with err.status(f"waiting for {len(names)} Service(s) to go"):
                    left = wait_for(conn, names, until="gone", timeout=timeout)
                if left:
                    err.print(f"[red]still there after {timeout:g}s:[/red] {', '.join(left)}")
                    raise typer.Exit(1)
    except EdgeInferError as exc:
        raise _fail(exc) from None
