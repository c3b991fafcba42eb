"""Dynamic batching: requests that arrive together run as one call of the model.

One sentence through MiniLM costs nearly the fixed price of a session run whatever
the batch holds; thirty-two sentences in one run cost a fraction of thirty-two runs
and use every thread of the session. So the embedding and classify paths of the onnx
runtime hand their inputs to a :class:`DynamicBatcher`, which gathers what arrives
and runs it in one call:

* while ``concurrency`` batches are running, new requests wait and go together in the
  next batch, which starts the moment one finishes;
* with a slot free, a request starts a batch at once when the last batch held a lone
  request (a single client is never delayed); under load (the last batch held
  several) it waits up to ``window`` seconds for company, or until ``max_items``
  inputs are waiting.

Each request gets its own rows back. If a batch fails (one request's input too long,
say), each request in it runs again alone, so the failure is the bad request's only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["DynamicBatcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[list[R]]
    since: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[T, R]):
    """Runs ``run`` (items -> one result per item; blocking, in ``executor``) on the
    inputs of the requests that arrive together. Event-loop side only."""

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        executor: Executor,
        window: float,
        max_items: int,
        concurrency: int = 1,
    ) -> None:
        self._run = run
        self._executor = executor
        self.window = window
        self.max_items = max_items
        self.concurrency = concurrency
        self._waiting: list[_Waiting[T, R]] = []
        self._running = 0
        self._busy = False  # the last batch held more than one request
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # batches run, and requests in them: for tests and stats
        self.batched_requests = 0

    async def submit(self, items: list[T]) -> list[R]:
        """The results for ``items``, in order, once the batch holding them has run."""
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(items, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._running < self.concurrency:
            self._waiting = [w for w in self._waiting if not w.future.done()]  # cancelled
            if not self._waiting:
                return
            waited = time.perf_counter() - self._waiting[0].since
            queued = sum(len(w.items) for w in self._waiting)
            if self._busy and waited < self.window and queued < self.max_items:
                if self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self.window - waited, self._on_timer)
                return
            self._start(self._take())

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    def _take(self) -> list[_Waiting[T, R]]:
        batch, count = [self._waiting[0]], len(self._waiting[0].items)
        for w in self._waiting[1:]:
            if count + len(w.items) > self.max_items:
                break
            batch.append(w)
            count += len(w.items)
        self._waiting = self._waiting[len(batch) :]
        return batch

    def _start(self, batch: list[_Waiting[T, R]]) -> None:
        self._running += 1
        self._busy = len(batch) > 1
        self.batches += 1
        self.batched_requests += len(batch)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._run_blocking, [w.items for w in batch])

        def done(f: asyncio.Future[list[list[R] | BaseException]]) -> None:
            self._running -= 1
            if f.cancelled():
                outcomes: list[list[R] | BaseException] = [
                    RuntimeError("the batch was cancelled")
                ] * len(batch)
            elif f.exception() is not None:
                outcomes = [f.exception() or RuntimeError()] * len(batch)
            else:
                outcomes = f.result()
            for w, outcome in zip(batch, outcomes, strict=True):
                if w.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    w.future.set_exception(outcome)
                else:
                    w.future.set_result(outcome)
            self._kick()

        work.add_done_callback(done)

    def _run_blocking(self, batch: list[list[T]]) -> list[list[R] | BaseException]:
        """In the executor: one call for the whole batch; on failure, one per request."""
        flat = [x for items in batch for x in items]
        try:
            results = list(self._run(flat))
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            return [self._alone(items) for items in batch]
        out: list[list[R] | BaseException] = []
        at = 0
        for items in batch:
            out.append(results[at : at + len(items)])
            at += len(items)
        return out

    def _alone(self, items: list[T]) -> list[R] | BaseException:
        try:
            return list(self._run(items))
        except Exception as exc:
            return exc
