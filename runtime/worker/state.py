"""The state of one worker: its model, its runtime, whether the model is loaded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import NamedTuple

from starlette.requests import Request

from runtime.backends.registry import Runtime
from runtime.errors import (
    DeadlineExceeded,
    EdgeInferError,
    ModelNotFound,
    ModelNotReady,
    RuntimeFailure,
)
from runtime.spec.model import ModelSpec
from runtime.spec.types import GenerateRequest, TokenChunk
from runtime.worker.metrics import WorkerMetrics

__all__ = ["Started", "WorkerState", "worker_state"]

log = logging.getLogger("edgeinfer.worker")


class Started(NamedTuple):
    """A generation under way (:meth:`WorkerState.first_token`)."""

    runtime: Runtime
    stream: AsyncGenerator[TokenChunk, None]
    first: TokenChunk  # an empty "stop" chunk when the stream yields none
    start: float  # perf_counter() when the stream was asked for


class WorkerState:
    """One model on one runtime. The worker is live as soon as it runs and ready once
    the model has loaded; requests that arrive while it loads wait for it (up to the
    model's request timeout) instead of failing, so a cold start costs latency, not
    errors."""

    def __init__(self, spec: ModelSpec, runtime: Runtime) -> None:
        self.spec = spec
        self.runtime = runtime
        self.metrics = WorkerMetrics(spec.name)
        self.metrics.generated.set_function(lambda: runtime.tokens_generated)
        self.created = int(time.time())
        self._loaded = asyncio.Event()
        self.load_error: EdgeInferError | None = None

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.load_error is None

    async def load(self) -> None:
        """Load the model; a failure is kept and reported by every request after."""
        try:
            report = await self.runtime.load()
        except EdgeInferError as exc:
            self.load_error = exc
            log.error("model %s failed to load: %s", self.spec.name, exc.message)
        except Exception as exc:  # a foreign failure inside the runtime's loader
            self.load_error = RuntimeFailure(f"model {self.spec.name!r} failed to load: {exc}")
            log.exception("model %s failed to load", self.spec.name)
        else:
            for phase, seconds in report.phases.items():
                self.metrics.load_phase.labels(self.spec.name, phase).set(seconds)
            self.metrics.memory.set(report.memory_bytes)
            log.info(
                "model %s loaded on %s/%s in %.3fs (%s)",
                self.spec.name,
                self.runtime.name.value,
                report.device,
                report.total,
                ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.phases.items()),
            )
        finally:
            self._loaded.set()

    async def loaded(self) -> None:
        """Returns once loading has ended, successfully or not."""
        await self._loaded.wait()

    async def wait_ready(self) -> Runtime:
        """The runtime, once loaded. Raises if loading failed or outlasts the request timeout."""
        if not self._loaded.is_set():
            try:
                await asyncio.wait_for(self._loaded.wait(), self.spec.scaling.timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"model {self.spec.name!r} did not finish loading in time"
                ) from None
        if self.load_error is not None:
            raise ModelNotReady(f"model {self.spec.name!r} failed to load: {self.load_error}")
        return self.runtime

    async def first_token(self, core: GenerateRequest) -> Started:
        """Start generating ``core`` and wait for its first token (the time to it is
        the TTFT metric), so that an error found up front (context overflow, a bad
        template) is raised before a stream's 200 is sent."""
        runtime = await self.wait_ready()
        runtime.check_generation(core)
        start = time.perf_counter()
        stream = runtime.stream(core)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = TokenChunk("", "stop")
        except BaseException:
            await stream.aclose()
            raise
        self.metrics.ttft.observe(time.perf_counter() - start)
        return Started(runtime, stream, first, start)

    def check_name(self, name: str) -> None:
        if name != self.spec.name:
            raise ModelNotFound(
                f"model {name!r} is not served here; this worker serves {self.spec.name!r}"
            )


def worker_state(request: Request) -> WorkerState:
    """The state of the worker app that received ``request``."""
    state: WorkerState = request.app.state.worker
    return state
