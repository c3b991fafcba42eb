"""The worker's command line, the one parser of its flags: ``python -m runtime.worker``
(how the supervisor starts replicas) and ``edgeinfer worker`` (how users and Knative's
pods start one) both run :func:`main`."""

from __future__ import annotations

import argparse
import logging
import sys

from runtime.errors import EdgeInferError
from runtime.settings import Settings
from runtime.spec.model import RuntimeName, load_config
from runtime.spec.placement import DEVICE_CHOICES

__all__ = ["main", "parser"]


def parser(prog: str = "python -m runtime.worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Serve one model over the OpenAI and OIP v2 HTTP contract."
    )
    p.add_argument("--model", default=None, help="Name of the model to serve.")
    p.add_argument(
        "--host-wasm",
        action="store_true",
        help="Run the WASM host instead: every WASM model of this machine, loaded on "
        "request (POST /admin/models/NAME/load), served under /m/NAME/.",
    )
    p.add_argument(
        "--preload",
        action="store_true",
        help="WASM host: load every WASM model of --config at start (a pod of the host).",
    )
    p.add_argument(
        "--memory-budget-mib",
        type=int,
        default=None,
        help="WASM host: resident models above this are unloaded, least recently used first.",
    )
    p.add_argument(
        "--config", default=None, help="Model config (YAML); the bundled models when omitted."
    )
    p.add_argument("--runtime", default="auto", choices=["auto", *(r.value for r in RuntimeName)])
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0..65535 (0: any free port)")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m runtime.worker") -> int:
    """Parse ``argv``, serve until SIGINT/SIGTERM; the process exit code: 0 after a clean
    shutdown, 1 when the model failed to load, 2 for a bad argument or config."""
    args = parser(prog).parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not in 0..65535", file=sys.stderr)
        return 2
    if args.host_wasm == (args.model is not None):
        print("error: give either --model NAME or --host-wasm", file=sys.stderr)
        return 2
    if args.memory_budget_mib is not None and args.memory_budget_mib < 1:
        print("error: --memory-budget-mib must be at least 1", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    if args.host_wasm:
        return _run_host(args, settings)
    from runtime.worker.server import run_worker  # imports uvicorn and the runtimes

    try:
        return run_worker(
            load_config(args.config),
            args.model,
            runtime=args.runtime,
            device=args.device,
            host=args.host,
            port=args.port,
            settings=settings,
        )
    except EdgeInferError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def _run_host(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.worker.wasm_host import run_host

    try:
        config = load_config(args.config)
    except EdgeInferError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    preload = (
        [m for m in config.models if RuntimeName.WASM in m.runtimes and m.endpoint is None]
        if args.preload
        else []
    )
    budget = None if args.memory_budget_mib is None else args.memory_budget_mib << 20
    return run_host(
        settings,
        config.base_dir,
        host=args.host,
        port=args.port,
        budget_bytes=budget,
        preload=preload,
    )
