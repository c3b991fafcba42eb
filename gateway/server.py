"""``edgeinfer serve``: the gateway and its embedded supervisor under uvicorn."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import uvloop

from gateway.app import Gateway
from gateway.auth import Authenticator
from gateway.config import gateway_config
from runtime.backend import registered_runtimes
from runtime.errors import ConfigError
from runtime.forkserver import ForkServer
from runtime.http_server import http_server
from runtime.inventory import Inventory, probe_local
from runtime.manager import Manager
from runtime.policy import policy_config
from runtime.profiles import ProfileStore
from runtime.settings import Settings
from runtime.spec import ModelConfig
from runtime.supervisor import Supervisor

__all__ = ["build_gateway", "run_gateway"]


def build_gateway(
    config: ModelConfig,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    environ: Mapping[str, str] | None = None,
    probe: Callable[[], Inventory] = probe_local,
) -> Gateway:
    """The app for a config: supervisor with worker processes, the runtime manager
    placing models on the inventory ``probe`` reports, keys from the environment."""
    gw = gateway_config(config)
    try:
        authenticator = Authenticator.from_config(
            gw.auth, os.environ if environ is None else environ
        )
    except ValueError as exc:
        raise ConfigError(f"{config.source}: gateway.auth: {exc}") from None
    assert config.source is not None
    spawner = ForkServer(
        config_path=Path(config.source),
        log_dir=settings.state_dir / "logs",
        socket_path=settings.state_dir / f"forkserver-{os.getpid()}.sock",
    )
    supervisor = Supervisor(
        config,
        spawner=spawner,
        tick=gw.tick_seconds,
        max_queue=gw.max_queue,
        ready_timeout=gw.ready_timeout_seconds,
        scale_to_zero_grace=gw.scale_to_zero_grace_seconds,
        clock=clock,
    )
    store = ProfileStore(settings.state_dir / "profiles")
    policy = policy_config(config)
    manager = Manager(
        config,
        supervisor,
        probe=probe,
        profiles={m.name: store.for_model(m, config.base_dir) for m in config.models if m.runtimes},
        policy=policy,
        available=registered_runtimes(),
        clock=clock,
        tick=policy.tick_seconds,
    )
    return Gateway(config, gw, supervisor, authenticator, clock=clock, manager=manager)


def run_gateway(config: ModelConfig, settings: Settings, *, host: str, port: int) -> None:
    app = build_gateway(config, settings)
    server = http_server(
        app, host=host, port=port, log_level=settings.log_level, graceful_seconds=30
    )
    uvloop.run(server.serve())
