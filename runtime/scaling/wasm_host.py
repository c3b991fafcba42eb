"""Replicas of WASM models inside one warm WASM host process.

:class:`WasmHostLauncher` is a :class:`~runtime.scaling.replica.Launcher`: a model
whose tier is the ``wasm`` runtime gets an *in-host* replica, every other model goes to
the launcher it wraps (worker processes). The host (``python -m runtime.worker
--host-wasm``) is one process for all WASM models; the launcher starts it, keeps it
warm while WASM models are configured (``keep_warm``), and starts it again after it
died. Scaling a model from zero then spawns nothing: the replica's readiness asks the
host to activate the model (``POST /admin/models/{name}/load``, loading it only if it
is not resident), and stopping the replica asks the host to release it (its
instances go; its compiled code and weights stay until the host's memory budget
needs them).

The replica's ``process`` is an :class:`InHostModel`: a
:class:`~runtime.scaling.replica.ProcessHandle` of the model inside the host, whose
``wait()`` returns when the model was released or the host died; its ``pid`` is the
host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from runtime.errors import ModelNotReady
from runtime.scaling.replica import ColdStart, Launcher, Replica, free_port
from runtime.settings import HOST_TOKEN_ENV
from runtime.spec.model import ModelConfig, ModelSpec, RuntimeName
from runtime.spec.placement import Tier

__all__ = [
    "HostProcess",
    "InHostModel",
    "WasmHostLauncher",
    "in_host",
    "model_path",
    "wants_host",
]

log = logging.getLogger("edgeinfer.wasm_host")


def in_host(spec: ModelSpec, tier: Tier | None) -> bool:
    """Whether a replica of ``spec`` on ``tier`` runs inside the WASM host: its tier's
    runtime is ``wasm`` (with no placement: its first runtime is)."""
    if spec.endpoint is not None:
        return False
    if tier is not None:
        return tier.runtime is RuntimeName.WASM
    return bool(spec.runtimes) and spec.runtimes[0] is RuntimeName.WASM


def wants_host(config: ModelConfig) -> bool:
    """Whether any model of ``config`` that starts replicas may run in the WASM host."""
    return any(RuntimeName.WASM in m.runtimes and m.endpoint is None for m in config.models)


def model_path(name: str) -> str:
    """Where the host serves a model: its routes under this prefix."""
    return f"/m/{name}"


class HostProcess:
    """The WASM host process: started on demand, restarted after it died.

    ``command`` is its argv without the port; its output goes to ``log_file``. A
    random admin token is handed to it in its environment (the admin routes then
    answer only the launcher)."""

    def __init__(self, command: list[str], log_file: Path, *, ready_timeout: float = 60.0) -> None:
        self.command = command
        self.log_file = log_file
        self.ready_timeout = ready_timeout
        self.token = secrets.token_urlsafe(24)
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.starts = 0
        self._live: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def ensure(self) -> asyncio.subprocess.Process:
        """The running host process, started if it is not (not yet waited for)."""
        async with self._lock:
            if self.process is not None and self.process.returncode is None:
                return self.process
            self.port = free_port()
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            # The host inherits this process's environment, plus its token.
            env = {**os.environ, HOST_TOKEN_ENV: self.token}
            with self.log_file.open("ab") as log_out:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command,
                    "--port",
                    str(self.port),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_out,
                    stderr=log_out,
                    env=env,
                    start_new_session=True,
                )
            self.starts += 1
            self._live = None
            log.info("WASM host started (pid %d, port %d)", self.process.pid, self.port)
            return self.process

    async def live(self, session: aiohttp.ClientSession) -> None:
        """Returns once the host answers; ModelNotReady if it exits or takes too long.
        Concurrent callers share one wait."""
        process = await self.ensure()
        if self._live is None or (self._live.done() and self._live.exception() is not None):
            self._live = asyncio.ensure_future(self._poll(session, process))
        await asyncio.shield(self._live)

    async def _poll(
        self, session: aiohttp.ClientSession, process: asyncio.subprocess.Process
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        url = f"http://127.0.0.1:{self.port}/v2/health/live"
        while loop.time() < deadline:
            if process.returncode is not None:
                raise ModelNotReady(
                    f"the WASM host exited with {process.returncode} while starting "
                    f"(log: {self.log_file})"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.02)
        raise ModelNotReady(f"the WASM host did not answer in {self.ready_timeout:.0f}s")

    async def stop(self, grace: float = 10.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class InHostModel:
    """A :class:`~runtime.scaling.replica.ProcessHandle` of one model inside the host.

    ``terminate``/``kill`` release the model in the host (it scales to zero there; the
    host lives on); ``wait`` returns 0 once it was released, or the host's exit code
    if the host died first."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        release: Callable[[], Any],
    ) -> None:
        self._process = process
        self._release = release
        self._released = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._code: int | None = None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        if self._code is not None:
            return self._code
        return self._process.returncode

    def terminate(self) -> None:
        if self._task is None and self.returncode is None:
            self._task = asyncio.ensure_future(self._do_release())

    def kill(self) -> None:
        self.terminate()

    async def _do_release(self) -> None:
        try:
            await self._release()
        except Exception as exc:  # the host is gone or refused: the model is gone too
            log.warning("releasing a model in the WASM host failed: %s", exc)
        finally:
            self._code = 0
            self._released.set()

    async def wait(self) -> int:
        released = asyncio.ensure_future(self._released.wait())
        host = asyncio.ensure_future(self._process.wait())
        try:
            await asyncio.wait({released, host}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            host.cancel()
        code = self.returncode
        return 0 if code is None else code


class WasmHostLauncher:
    """In-host replicas for WASM models, ``inner``'s replicas for the others.

    ``config`` is the models' config (the host resolves artifact paths against its
    folder); ``keep_warm`` starts the host with the launcher when any model lists the
    ``wasm`` runtime (False: on the first in-host replica); ``budget_mib`` bounds the
    host's resident models (None: unbounded)."""

    def __init__(
        self,
        inner: Launcher,
        config: ModelConfig,
        *,
        log_dir: Path,
        clock: Callable[[], float],
        ready_timeout: float,
        keep_warm: bool = True,
        budget_mib: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.inner = inner
        self.config = config
        self._clock = clock
        self._ready_timeout = ready_timeout
        self.keep_warm = keep_warm
        command = [python, "-m", "runtime.worker", "--host-wasm"]
        if config.source is not None:
            command += ["--config", str(config.source)]
        if budget_mib is not None:
            command += ["--memory-budget-mib", str(budget_mib)]
        self.host = HostProcess(command, log_dir / "wasm-host.log", ready_timeout=ready_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._warm: asyncio.Task[None] | None = None
        self._inner_up = False
        self._inner_lock = asyncio.Lock()

    def wanted(self) -> bool:
        """Whether any configured model may run in the host."""
        return wants_host(self.config)

    def wasm_only(self) -> bool:
        """Whether every model that starts replicas can only run in the host (then the
        inner launcher, a fork server that pre-imports every runtime, starts only if a
        replica ever needs it)."""
        models = [m for m in self.config.models if m.endpoint is None]
        return all(m.runtimes == [RuntimeName.WASM] for m in models)

    async def _inner_started(self) -> None:
        async with self._inner_lock:
            if not self._inner_up:
                await self.inner.start()
                self._inner_up = True

    async def start(self) -> None:
        if not self.wasm_only():
            await self._inner_started()
        # A fresh connection per admin call: they are rare, and a kept-alive one that
        # the host's server closed meanwhile would fail the call (connection reset).
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        if self.keep_warm and self.wanted():
            self._warm = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        assert self._session is not None
        try:
            await self.host.live(self._session)
        except ModelNotReady as exc:
            log.error("%s", exc.message)

    async def close(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm
        await self.host.stop()
        if self._inner_up:
            await self.inner.close()
        if self._session is not None:
            await self._session.close()

    async def __call__(self, spec: ModelSpec, tier: Tier | None = None) -> Replica:
        if not in_host(spec, tier):
            await self._inner_started()
            return await self.inner(spec, tier)
        if self._session is None:
            raise ModelNotReady(f"model {spec.name!r}: the WASM host launcher was not started")
        session = self._session
        started = self._clock()
        process = await self.host.ensure()
        name = spec.name
        host = self.host

        async def release() -> None:
            url = f"http://127.0.0.1:{host.port}/admin/models/{name}/release"
            await self._admin(session, url, b"")

        async def readiness(replica: Replica) -> ColdStart:
            await host.live(session)
            live_at = self._clock()
            replica.port = host.port
            url = f"http://127.0.0.1:{host.port}/admin/models/{name}/load"
            body = await self._admin(session, url, spec.model_dump_json(by_alias=True).encode())
            phases = body.get("load", {}).get("phases", {})
            warmup = float(phases.get("warmup", 0.0))
            load = sum(float(v) for k, v in phases.items() if k != "warmup")
            return ColdStart(
                phases={"spawn": live_at - started, "load": load, "warmup": warmup},
                finished_at=self._clock(),
            )

        return Replica(
            model=name,
            port=host.port,
            process=InHostModel(process, release),
            started=started,
            tier=tier,
            readiness=readiness,
            path=model_path(name),
        )

    async def _admin(self, session: aiohttp.ClientSession, url: str, body: bytes) -> Any:
        headers = {"authorization": f"Bearer {self.host.token}"}
        timeout = aiohttp.ClientTimeout(total=self._ready_timeout)
        try:
            async with session.post(url, data=body, headers=headers, timeout=timeout) as r:
                answer = await r.json(content_type=None)
                if r.status != 200:
                    error = answer.get("error") if isinstance(answer, dict) else answer
                    raise ModelNotReady(f"the WASM host answered {r.status}: {error}")
                return answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ModelNotReady(f"the WASM host did not answer {url}: {exc}") from None
