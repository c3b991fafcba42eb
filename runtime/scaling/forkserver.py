"""A fork server for worker processes: cold starts without Python's start-up cost.

Starting ``edgeinfer worker`` as a new process spends most of a second importing
(fastapi, uvicorn, numpy, llama_cpp, onnxruntime) before it can even open the model.
The fork server is one process that has done those imports once and then waits on a
Unix socket; each request to start a worker forks it (milliseconds), and the child
runs the worker for its model. Memory of the imported code is shared copy-on-write.

Protocol, one JSON object per line on the socket: ``{"config", "model", "port", "log",
"runtime", "device"}`` -> ``{"pid": N}`` or ``{"error": "..."}``. Children are reaped
by the server; the supervisor watches them through a pidfd (``ForkedProcess``).

Run as ``python -m runtime.scaling.forkserver SOCKET``; :class:`ForkServer` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ModelNotReady
from runtime.scaling.replica import ProcessHandle, WorkerProcess
from runtime.spec.model import ModelSpec
from runtime.spec.placement import Tier

__all__ = ["ForkServer", "ForkedProcess"]

log = logging.getLogger("edgeinfer.forkserver")

_PR_SET_PDEATHSIG = 1


class ForkedProcess:
    """A process that is not our child (the fork server's), watched through a pidfd.
    Its exit status belongs to its parent, so ``returncode`` is -1 once it has exited."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = None
            self._mark_exited()
            return
        asyncio.get_running_loop().add_reader(self._fd, self._mark_exited)

    def _mark_exited(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._returncode = -1
        if not self._exited.done():
            self._exited.set_result(-1)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def terminate(self) -> None:
        os.kill(self._pid, signal.SIGTERM)

    def kill(self) -> None:
        os.kill(self._pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


@dataclass
class ForkServer:
    """The supervisor's spawner: forks workers from a pre-imported server process.
    ``start`` launches the server; ``close`` stops it (its workers keep running until
    the supervisor stops them)."""

    config_path: Path
    log_dir: Path
    socket_path: Path
    runtime: str = "auto"
    device: str = "auto"
    environ: Mapping[str, str] | None = None  # the server's and so its workers' (None: ours)
    _server: asyncio.subprocess.Process | None = None

    _fallback: WorkerProcess | None = None

    async def start(self) -> None:
        """Launch the server. If it cannot start, workers start as plain processes."""
        try:
            await self._launch(ready_timeout=60.0)
        except (OSError, RuntimeError) as exc:
            log.warning("fork server unavailable (%s); starting workers as processes", exc)
            self._fallback = WorkerProcess(self.config_path, self.log_dir, environ=self.environ)

    async def _launch(self, ready_timeout: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with (self.log_dir / "forkserver.log").open("ab") as out:
            self._server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.scaling.forkserver",
                str(self.socket_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.environ,
                # Its own session: a Ctrl-C or a signal to the gateway's process group
                # must not kill the workers before the supervisor has drained them.
                start_new_session=True,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while not self.socket_path.exists():
            if self._server.returncode is not None or loop.time() > deadline:
                raise RuntimeError(f"the fork server did not start; see {self.log_dir}")
            await asyncio.sleep(0.01)

    async def _relaunch(self, why: str) -> None:
        """The server is gone (killed, crashed): start a new one; where that fails too,
        workers start as plain processes from now on. The workers it forked live on."""
        log.warning("fork server %s; starting a new one", why)
        try:
            await self._launch(ready_timeout=60.0)
        except (OSError, RuntimeError) as exc:
            log.warning("fork server unavailable (%s); starting workers as processes", exc)
            self._fallback = WorkerProcess(self.config_path, self.log_dir, environ=self.environ)

    async def __call__(self, spec: ModelSpec, port: int, tier: Tier | None = None) -> ProcessHandle:
        if self._fallback is None and self._server is not None:
            if self._server.returncode is not None:
                await self._relaunch(f"exited with {self._server.returncode}")
        if self._fallback is not None:
            return await self._fallback(spec, port, tier)
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:  # its socket is gone: so is the server, or it soon will be
            if self._server is not None and self._server.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._server.kill()
                await self._server.wait()
            await self._relaunch(f"unreachable ({exc})")
            if self._fallback is None:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                except OSError as again:
                    log.warning("new fork server unreachable (%s); plain processes", again)
                    self._fallback = WorkerProcess(
                        self.config_path, self.log_dir, environ=self.environ
                    )
            if self._fallback is not None:
                return await self._fallback(spec, port, tier)
        log_path = self.log_dir / f"{spec.name}{'-' + tier.key if tier else ''}.log"
        try:
            writable_log(log_path)
            request = {
                "config": str(self.config_path),
                "model": spec.name,
                "port": port,
                "log": str(log_path),
                "runtime": self.runtime if tier is None else tier.runtime.value,
                "device": self.device if tier is None else tier.device.value,
                "threads": spec.options.threads,  # the core budget's width for this one
            }
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await reader.readline() or b"{}")
        finally:
            writer.close()
        if "pid" not in reply:
            raise RuntimeError(f"the fork server refused: {reply.get('error', 'no answer')}")
        return ForkedProcess(int(reply["pid"]))

    async def close(self) -> None:
        if self._server is not None and self._server.returncode is None:
            self._server.terminate()
            await self._server.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def writable_log(path: Path) -> None:
    """Open ``path`` for appending here, so that a state folder that cannot be written
    (EDGEINFER_HOME read-only, its disk full) is a clear error for this start instead
    of a forked worker that dies without a word."""
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ModelNotReady(
            f"cannot write the worker's log {path} ({exc.strerror or exc}): is "
            "EDGEINFER_HOME writable, and its disk not full?"
        ) from None


# -- the server process ----------------------------------------------------------------


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the worker. Returns its exit code."""
    from runtime.settings import Settings
    from runtime.spec.model import load_config
    from runtime.worker.server import run_worker

    os.setsid()  # signals to the fork server's group do not reach workers
    _exit_with_parent()  # ...but a fork server that dies takes its workers along
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if request.get("threads"):  # narrowed by the core budget (the config's spec is not)
        os.environ["EDGEINFER_CPU_CORES"] = str(int(request["threads"]))
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(message)s", force=True
    )
    return run_worker(
        load_config(request["config"]),
        request["model"],
        runtime=request["runtime"],
        device=request["device"],
        host="127.0.0.1",
        port=int(request["port"]),
        settings=settings,
    )


def _exit_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies, so no worker
    outlives the gateway that started it (and holds a model's memory for nothing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's own shutdown still stops workers
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _reap(*_: Any) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def serve(socket_path: str) -> None:
    # What every worker needs, imported once here and shared by every fork.
    import llama_cpp  # noqa: F401
    import onnxruntime  # noqa: F401

    import runtime.backends.llama
    import runtime.backends.onnx
    import runtime.worker.server  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    _exit_with_parent()  # a gateway that dies, even by SIGKILL, takes us along
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = socket_path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    listener.bind(tmp)
    listener.listen(16)
    os.rename(tmp, socket_path)  # the path appears only once we accept
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
            except (ValueError, OSError) as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                code = 1
                try:
                    code = _child(request)
                except BaseException:
                    logging.exception("worker failed")
                finally:
                    os._exit(code)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


if __name__ == "__main__":
    serve(sys.argv[1])
