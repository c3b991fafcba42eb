"""One replica of a model: a worker process on a loopback port, and how to start it.

A replica is started by a ``Launcher`` (injected, so tests and other hosts can replace
process creation): the real one, :class:`WorkerLauncher`, has a ``Spawner`` start a
worker process. The replica says itself when it serves: ``await replica.ready()``
(for a worker, :class:`HttpReadiness` polls its ``/v2/health/ready`` until it answers
ready). It serves until it is *draining* (no new requests; the ones in flight finish),
then stops. Its cold start is reported in three phases: ``spawn`` (process start until
the worker answers HTTP), ``load`` (the model's resolve + load, as the worker measured
it) and ``warmup`` (the worker's first inference).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from runtime.errors import ModelNotReady
from runtime.scaling.health import Liveness
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Tier

__all__ = [
    "ColdStart",
    "HttpLiveness",
    "HttpReadiness",
    "Launcher",
    "ProcessHandle",
    "Readiness",
    "Replica",
    "ReplicaState",
    "Spawner",
    "WorkerLauncher",
    "WorkerProcess",
    "spawn_worker",
]


class ReplicaState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ColdStart:
    """Seconds in each phase of one replica's start, and when it finished."""

    phases: dict[str, float]
    finished_at: float

    @property
    def total(self) -> float:
        return sum(self.phases.values())


class ProcessHandle(Protocol):
    """What the supervisor needs of a started process (asyncio's ``Process`` fits)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...

    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int: ...


class Spawner(Protocol):
    """Starts worker processes: ``await spawner(spec, port, tier)``; ``start`` and
    ``close`` bracket its life (the supervisor calls them). ``tier`` says which runtime
    and device the worker loads the model on; None lets the worker choose (``auto``)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def __call__(
        self, spec: ModelSpec, port: int, tier: Tier | None = None
    ) -> Awaitable[ProcessHandle]: ...


class Readiness(Protocol):
    """How a started replica tells that it serves: ``await readiness(replica)`` returns
    its cold start, or raises ModelNotReady (it exited, failed to load, took too long)."""

    def __call__(self, replica: Replica) -> Awaitable[ColdStart]: ...


@dataclass
class Replica:
    model: str
    port: int
    process: ProcessHandle
    started: float
    state: ReplicaState = ReplicaState.STARTING
    in_flight: int = 0
    served: int = 0
    cold_start: ColdStart | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    base_url: str | None = None
    tier: Tier | None = None  # None: the runtime the worker chose itself
    readiness: Readiness | None = None  # None: it serves from the start (external)
    # A prefix before every request target: one model inside a multi-model server
    # (the WASM host serves each model under ``/m/{model}``); "" for a worker.
    path: str = ""
    # None: nobody probes it (an external server, a fake); see runtime.scaling.health
    liveness: Liveness | None = None
    # time.monotonic() of the last request begun while idle or byte of an answer sent:
    # real time, whatever clock the pool is given (tests move theirs by hand)
    last_progress: float = 0.0

    @property
    def url(self) -> str:
        return (self.base_url or f"http://127.0.0.1:{self.port}") + self.path

    @property
    def address(self) -> tuple[str, int]:
        """Host and port to connect to."""
        if self.base_url is None:
            return "127.0.0.1", self.port
        rest = self.base_url.removeprefix("http://")
        host, _, port = rest.rpartition(":")
        return (host, int(port)) if host else (rest, 80)

    @classmethod
    def external(cls, model: str, url: str, now: float, path: str = "") -> Replica:
        """A replica that is a server someone else runs (``endpoint`` in the spec, a
        Knative Service; ``path``: the model's prefix on a multi-model one)."""
        return cls(
            model=model,
            port=0,
            process=_External(),
            started=now,
            state=ReplicaState.READY,
            base_url=url,
            path=path,
        )

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def exited(self, within: float) -> bool:
        """Whether this replica's process has exited, waiting up to ``within`` seconds
        for it (a killed process resets its connections a moment before its exit is
        seen). Never for an external server: its life is not ours to see."""
        if self.base_url is not None:
            return False
        if not self.alive:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), within)
        except TimeoutError:
            return False
        return True

    def begin(self) -> None:
        if self.in_flight == 0:
            self.last_progress = time.monotonic()
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        self.served += 1
        if self.in_flight == 0:
            self.idle.set()

    def progressed(self) -> None:
        """A byte of an answer went out (the proxy says so): the watchdog's evidence."""
        self.last_progress = time.monotonic()

    async def ready(self) -> ColdStart:
        """Wait until this replica serves; its cold start. Raises ModelNotReady if it
        exits, fails to load or takes too long (as its ``readiness`` judges)."""
        if self.readiness is None:
            return ColdStart(phases={}, finished_at=self.started)
        return await self.readiness(self)

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process exited."""
        self.state = ReplicaState.STOPPED
        if self.base_url is None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


class _External:
    """The process handle of an external server: never ours to stop or to watch exit."""

    pid = 0
    returncode = None

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None

    async def wait(self) -> int:
        await asyncio.Event().wait()  # forever: its life is not ours to see
        return 0


@dataclass(frozen=True)
class HttpReadiness:
    """A worker is ready when its ``/v2/health/ready`` says so; polled on ``session``
    for at most ``limit_s`` seconds of ``clock``."""

    session: aiohttp.ClientSession
    clock: Callable[[], float]
    limit_s: float

    async def __call__(self, replica: Replica) -> ColdStart:
        clock = self.clock
        deadline = clock() + self.limit_s
        live_at: float | None = None
        while clock() < deadline:
            if not replica.alive:
                raise ModelNotReady(
                    f"a replica of {replica.model!r} exited with "
                    f"{replica.process.returncode} while starting"
                )
            body = await _probe(self.session, f"{replica.url}/v2/health/ready")
            if body is not None and body.get("model", replica.model) != replica.model:
                # Another model's worker holds the port: never route this model to it.
                raise ModelNotReady(
                    f"a replica of {replica.model!r} found port {replica.port} held by a "
                    f"worker of {body.get('model')!r}"
                )
            if body is not None:
                live_at = live_at or clock()
                if body.get("ready"):
                    return _cold_start(replica, body, live_at, clock())
                if body.get("error"):
                    raise ModelNotReady(f"model {replica.model!r} failed to load: {body['error']}")
            await asyncio.sleep(0.005 if live_at is None else 0.01)
        raise ModelNotReady(
            f"a replica of {replica.model!r} did not become ready in {self.limit_s:.0f}s"
        )


@dataclass(frozen=True)
class HttpLiveness:
    """A worker lives when ``GET /v2/health/live`` answers 200 within the timeout."""

    session: aiohttp.ClientSession

    async def __call__(self, url: str, limit_s: float) -> bool:
        try:
            async with self.session.get(
                f"{url}/v2/health/live", timeout=aiohttp.ClientTimeout(total=limit_s)
            ) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False


def _cold_start(replica: Replica, body: dict[str, Any], live_at: float, now: float) -> ColdStart:
    worker = body.get("load", {}).get("phases", {})
    load = float(worker.get("resolve", 0.0)) + float(worker.get("load", 0.0))
    warmup = float(worker.get("warmup", 0.0))
    return ColdStart(
        phases={"spawn": live_at - replica.started, "load": load, "warmup": warmup},
        finished_at=now,
    )


async def _probe(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            body: dict[str, Any] = await r.json(content_type=None)
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


# Ports this process handed out lately. The kernel may give a port that was just bound
# and closed again at once, so two workers started together could be handed one port:
# the second cannot bind it and the first answers for both.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)


def free_port() -> int:
    """A loopback port nobody listens on now, and not one handed out lately."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise OSError("no free loopback port that was not handed out lately")


@dataclass(frozen=True)
class WorkerProcess:
    """The default spawner: ``edgeinfer worker`` as a child process on ``port``, its
    output appended to ``log_dir/<model>.log``."""

    config_path: Path
    log_dir: Path
    extra_args: tuple[str, ...] = ()
    # The workers' environment (None: ours); the core budget's EDGEINFER_CPU_CORES.
    environ: Mapping[str, str] | None = None

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def __call__(self, spec: ModelSpec, port: int, tier: Tier | None = None) -> ProcessHandle:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        placed = () if tier is None else ("--runtime", tier.runtime, "--device", tier.device)
        env = self.environ
        if spec.options.threads:  # the core budget's width (the config's spec may not say)
            env = {**(env or os.environ), "EDGEINFER_CPU_CORES": str(spec.options.threads)}
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.worker",
                "--model",
                spec.name,
                "--config",
                str(self.config_path),
                "--port",
                str(port),
                *placed,
                *self.extra_args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # drained by the supervisor, not by Ctrl-C
            )


async def spawn_worker(
    spawner: Spawner,
    spec: ModelSpec,
    clock: Callable[[], float],
    tier: Tier | None = None,
    readiness: Readiness | None = None,
    liveness: Liveness | None = None,
) -> Replica:
    port = free_port()
    started = clock()
    process = await spawner(spec, port, tier)
    return Replica(
        model=spec.name,
        port=port,
        process=process,
        started=started,
        tier=tier,
        readiness=readiness,
        liveness=liveness,
    )


class Launcher(Protocol):
    """Starts one replica of a model: ``await launcher(spec, tier)`` returns it STARTING
    (``await replica.ready()`` says when it serves). ``start`` and ``close`` bracket the
    launcher's life (the supervisor calls them)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def __call__(self, spec: ModelSpec, tier: Tier | None = None) -> Awaitable[Replica]: ...


class WorkerLauncher:
    """The real launcher: worker processes from ``spawner`` on free loopback ports,
    ready when their health route says so (within ``ready_timeout`` seconds)."""

    def __init__(
        self, spawner: Spawner, *, clock: Callable[[], float], ready_timeout: float
    ) -> None:
        self.spawner = spawner
        self._clock = clock
        self._ready_timeout = ready_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.spawner.start()
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.spawner.close()
        if self._session is not None:
            await self._session.close()

    async def __call__(self, spec: ModelSpec, tier: Tier | None = None) -> Replica:
        if self._session is None:
            raise ModelNotReady(f"model {spec.name!r}: the worker launcher was not started")
        readiness = HttpReadiness(self._session, self._clock, self._ready_timeout)
        liveness = HttpLiveness(self._session)
        return await spawn_worker(self.spawner, spec, self._clock, tier, readiness, liveness)
