"""Shared fixtures: real worker processes on loopback ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from runtime.scaling.replica import free_port

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Gateways the tests start (and their subprocesses) measure nothing in the
    background: a test that wants autoprofile's measuring calls it itself."""
    os.environ.setdefault("EDGEINFER_MEASURE_MISSING", "0")


@dataclass
class WorkerProcess:
    """A real ``edgeinfer worker`` subprocess."""

    model: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop_cleanly(self) -> None:
        """SIGTERM, then check the worker drained and unloaded. uvicorn re-raises the
        signal once it has shut down, so the exit status is -SIGTERM (or 0)."""
        code = self.stop()
        out = self.output()
        assert code in (0, -signal.SIGTERM), f"worker {self.model} exited {code}:\n{out}"
        assert "Application shutdown complete" in out, out

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_worker(
    model: str,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 180.0,
) -> WorkerProcess:
    port = free_port()
    log = log_dir / f"worker-{model}-{port}.log"
    cmd = [sys.executable, "-m", "gateway", "worker", "--model", model, "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    worker = WorkerProcess(model, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker for {model} exited with {proc.returncode}:\n{worker.output()}"
            )
        try:
            if httpx.get(f"{worker.url}/v2/health/ready", timeout=2).status_code == 200:
                return worker
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"worker for {model} not ready in {ready_timeout}s:\n{worker.output()}")


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


def running_worker(
    model: str, logs: Path, *args: str, ready_timeout: float = 180.0
) -> Iterator[WorkerProcess]:
    """A worker for a fixture to yield from: started, then stopped cleanly after use."""
    worker = start_worker(model, logs, *args, ready_timeout=ready_timeout)
    yield worker
    worker.stop_cleanly()


@pytest.fixture(scope="session")
def smollm2_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from running_worker("smollm2", worker_logs)


@pytest.fixture(scope="session")
def minilm_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from running_worker("minilm", worker_logs)


@pytest.fixture(scope="session")
def magika_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from running_worker("magika", worker_logs)
