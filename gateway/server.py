"""``edgeinfer serve``: the gateway and its embedded supervisor, on the gateway's own
HTTP/1.1 server (``gateway.http1``) and uvloop."""

from __future__ import annotations

import gc
import logging
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import uvloop

from gateway.access_log import log_to_stdout
from gateway.app import Gateway
from gateway.auth import Authenticator
from gateway.config import gateway_config
from gateway.http1 import Http1Server
from runtime.backends.registry import cuda_runtimes, registered_runtimes
from runtime.errors import ConfigError
from runtime.placement.autoprofile import measure_missing
from runtime.placement.inventory import Inventory, probe_local
from runtime.placement.manager import Manager
from runtime.placement.policy import policy_config
from runtime.placement.profiles import ProfileStore
from runtime.scaling.cores import host_cores
from runtime.scaling.forkserver import ForkServer
from runtime.scaling.replica import Launcher, WorkerLauncher
from runtime.scaling.source import ReplicaSource
from runtime.scaling.supervisor import Supervisor
from runtime.scaling.wasm_host import WasmHostLauncher, wants_host
from runtime.settings import Settings
from runtime.spec.model import ModelConfig
from runtime.worker.tracing import tracer_provider

__all__ = ["build_gateway", "raise_fd_limit", "run_gateway"]

log = logging.getLogger("edgeinfer.gateway")


def build_gateway(
    config: ModelConfig,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    environ: Mapping[str, str] | None = None,
    probe: Callable[[], Inventory] = probe_local,
    clusters: Sequence[str] = (),
) -> Gateway:
    """The app for a config: supervisor with worker processes, the runtime manager
    placing models on the inventory ``probe`` reports, keys from the environment; with
    ``clusters``, the models' Knative Services on them instead of workers."""
    gw = gateway_config(config)
    try:
        authenticator = Authenticator.from_config(
            gw.auth, os.environ if environ is None else environ
        )
    except ValueError as exc:
        raise ConfigError(f"{config.source}: gateway.auth: {exc}") from None
    provider = tracer_provider(config.telemetry, settings.otel, "edgeinfer-gateway")
    if clusters:
        router = _cluster_router(config, clusters, gw.scale_to_zero_grace_seconds, clock)
        return Gateway(config, gw, router, authenticator, clock=clock, tracer_provider=provider)
    assert config.source is not None
    cores = host_cores() - gw.reserved_cores
    if cores < 1:
        raise ConfigError(
            f"{config.source}: gateway.reserved_cores {gw.reserved_cores} leaves no core for "
            f"replicas on this machine's {host_cores()}"
        )
    spawner = ForkServer(
        environ=Settings.cores_environ(cores),
        config_path=Path(config.source),
        log_dir=settings.state_dir / "logs",
        socket_path=settings.state_dir / f"forkserver-{os.getpid()}.sock",
    )
    launcher: Launcher = WorkerLauncher(
        spawner, clock=clock, ready_timeout=gw.ready_timeout_seconds
    )
    if gw.wasm_host.enabled and wants_host(config):  # WASM models in one warm host process
        launcher = WasmHostLauncher(
            launcher,
            config,
            log_dir=settings.state_dir / "logs",
            clock=clock,
            ready_timeout=gw.ready_timeout_seconds,
            keep_warm=gw.wasm_host.keep_warm,
            budget_mib=gw.wasm_host.memory_budget_mib,
        )
    supervisor = Supervisor(
        config,
        launcher=launcher,
        tick=gw.tick_seconds,
        max_queue=gw.max_queue,
        scale_to_zero_grace=gw.scale_to_zero_grace_seconds,
        clock=clock,
        health=gw.health,
        cores=cores,
    )
    store = ProfileStore(settings.state_dir / "profiles")
    policy = policy_config(config)
    if not (gw.wasm_host.enabled and wants_host(config)):  # WASM models: a process each
        policy = policy.model_copy(update={"wasm_in_host": False})
    manager = Manager(
        config,
        supervisor,
        probe=probe,
        profiles={m.name: store.for_model(m, config.base_dir) for m in config.models if m.runtimes},
        policy=policy,
        available=registered_runtimes(),
        cuda_runtimes=cuda_runtimes(),
        clock=clock,
        tick=policy.tick_seconds,
        background=(
            partial(measure_missing, config=config, store=store, settings=settings)
            if settings.measure_missing
            else None
        ),
    )
    supervisor.on_crash_loop = manager.start_failed
    return Gateway(
        config,
        gw,
        supervisor,
        authenticator,
        clock=clock,
        manager=manager,
        tracer_provider=provider,
    )


def _cluster_router(
    config: ModelConfig, names: Sequence[str], grace: float, clock: Callable[[], float]
) -> ReplicaSource:
    """Cluster mode (knative.router): the same surface as the supervisor."""
    from knative.router import ClusterRouter
    from knative.targets import Overrides, select_clusters

    chosen = select_clusters(config, Overrides(clusters=tuple(names)))
    router = ClusterRouter(config, chosen, scale_to_zero_grace=grace, clock=clock)
    router.connect()
    return router


def run_gateway(
    config: ModelConfig,
    settings: Settings,
    *,
    host: str,
    port: int,
    clusters: Sequence[str] = (),
) -> None:
    app = build_gateway(config, settings, clusters=clusters)
    log_to_stdout()
    fd_limit = raise_fd_limit()
    limits = gateway_config(config).server
    server = Http1Server(app, host=host, port=port, graceful_seconds=30, limits=limits)
    log.info("file descriptor limit %d", fd_limit)
    # What imports and the build made lives as long as the process: moved out of the
    # collector's reach, a full collection scans what requests made, not ~100k objects
    # (measured: a third of the gateway's time in GC went to those scans under load).
    gc.collect()
    gc.freeze()
    uvloop.run(server.serve())


def raise_fd_limit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit (each client
    connection costs a descriptor, and a proxied one two); the soft limit now in force.
    Where the hard limit is unlimited, ask for 1,048,576 (Linux's default
    ``nr_open``); where raising fails, keep the soft limit as it is."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d: %s", soft, exc)
            return soft
        return target
    return soft
