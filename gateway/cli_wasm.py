"""``edgeinfer wasm ...``: run a WebAssembly module as WasmEdge's CLI does, and build
the guests of ``wasm-modules/``. Parses arguments only; ``runtime.backends.wasm`` does the work."""

from __future__ import annotations

from pathlib import Path

import typer

from runtime.settings import Settings

__all__ = ["wasm_app"]

wasm_app = typer.Typer(
    name="wasm", help="Run WebAssembly modules in edgeinfer's sandbox.", no_args_is_help=True
)


@wasm_app.command(
    "run",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def run(
    module: Path = typer.Argument(..., help="The WASI command module (.wasm)."),
    args: list[str] | None = typer.Argument(None, help="Arguments passed to the guest."),
    dirs: list[str] = typer.Option(
        [], "--dir", help="HOST:GUEST[:readonly] (or PATH): a directory the guest may use."
    ),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE in the guest's environment."),
    nn_preload: list[str] = typer.Option(
        [], "--nn-preload", help="NAME:ENCODING:TARGET:PATH, a wasi-nn graph loaded by name."
    ),
    timeout: float | None = typer.Option(None, "--timeout", min=0.001, help="Deadline, seconds."),
    max_memory: int | None = typer.Option(
        None, "--max-memory", min=1, help="Linear memory limit, MiB."
    ),
) -> None:
    """Run MODULE with ARGS; its stdout/stderr pass through and its exit code is ours."""
    from runtime.backends.wasm.command import RunOptions, run_module  # imports wasmtime

    options = RunOptions(
        module=module,
        args=list(args or []),
        dirs=dirs,
        env=env,
        nn_preload=nn_preload,
        timeout_s=timeout,
        max_memory_mib=max_memory,
    )
    raise typer.Exit(run_module(options, Settings.from_env()))


@wasm_app.command("build")
def build(guests: list[str] | None = typer.Argument(None, help="Guests (default: all).")) -> None:
    """Build guests of wasm-modules/ (cached) and print their paths."""
    from runtime.backends.wasm.build import main as build_main

    raise typer.Exit(build_main(list(guests or [])))
