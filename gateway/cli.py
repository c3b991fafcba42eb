"""The ``edgeinfer`` command line (DESIGN.md, "Command line"). Parses arguments only
when ``main`` runs; each command hands off to the package that does the work."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from gateway import cli_manager
from gateway.cli_wasm import wasm_app
from runtime.errors import EdgeInferError, GatewayUnreachable
from runtime.settings import Settings
from runtime.spec.model import load_config

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgeinfer",
    help="Serverless inference runtime manager: WASM at the edge, native on GPUs, scale to zero.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
app.add_typer(wasm_app)


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def worker(ctx: typer.Context) -> None:
    """Serve one model over the OpenAI and OIP v2 HTTP contract (--help for its flags)."""
    from runtime.worker.cli import main as worker_main  # the worker's one parser

    raise typer.Exit(worker_main(ctx.args, prog="edgeinfer worker"))


@app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", help="Model config (YAML); the bundled models when omitted."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    cluster: list[str] | None = typer.Option(
        None, "--cluster", help="Route to the models' Knative Services there (repeatable)."
    ),
) -> None:
    """The gateway: every model behind one endpoint, each scaled to and from zero."""
    from gateway.server import run_gateway  # imports uvicorn, aiohttp

    settings = Settings.from_env()
    _setup_logging(settings)
    try:
        run_gateway(load_config(config), settings, host=host, port=port, clusters=cluster or ())
    except EdgeInferError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def top(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The gateway to watch."),
    key: str | None = typer.Option(
        None, "--key", envvar="EDGEINFER_ADMIN_KEY", help="Its admin key (or the env var)."
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.2, max=60),
    once: bool = typer.Option(False, "--once", help="Print one table and exit."),
) -> None:
    """Live per-model replicas, traffic, latency and cold starts of a running gateway."""
    from gateway.top import run_top

    try:
        run_top(url, key, interval=interval, once=once, console=Console())
    except GatewayUnreachable as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def models(
    config: Path | None = typer.Option(None, "--config", help="Model config (YAML)."),
) -> None:
    """Validate a config and list its models."""
    from rich.table import Table

    try:
        cfg = load_config(config)
    except EdgeInferError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    table = Table("model", "task", "runtimes", "artifacts", "p95 goal", "scale")
    for m in cfg.models:
        table.add_row(
            m.name,
            m.task.value,
            ", ".join(r.value for r in m.runtimes),
            "\n".join(f"{k.value}: {v}" for k, v in m.artifacts.items()),
            f"{m.latency.p95_ms:g} ms",
            f"{m.scaling.min_scale}..{m.scaling.max_scale or '∞'}",
        )
    Console().print(table)


app.command("plan")(cli_manager.plan_command)
app.command("profile")(cli_manager.profile_command)

from knative.cli import app as knative_app  # noqa: E402  (a sub-app: edgeinfer knative ...)

app.add_typer(knative_app, name="knative")


def main() -> None:
    app()
