"""``isolation: request`` for the engine: a fresh instance per guest call, as Spin runs
a component, made from the model's snapshot (``runtime.backends.wasm.snapshot``) so that it
costs a store and a copy-on-write mapping rather than a load.

Nothing one call leaves in the guest (its memory, its globals, a half-finished state
after a trap) is seen by the next: each call's instance is dropped with its store when
the call returns. Each instance gets the package's sandbox (read-only mounts, memory
limit in its store, epoch deadline per call). At most ``size`` calls run at once (one
per thread of the guest's executor), like the pooled instances they stand in for.
"""

from __future__ import annotations

import threading

import numpy as np

from runtime.backends.wasm.engine.reactor import EngineInstance, EngineLayout, LaidOut
from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.backends.wasm.snapshot import SnapshotModule
from runtime.errors import DeadlineExceeded

__all__ = ["RequestPool"]


class RequestPool(LaidOut):
    """The interface of :class:`~runtime.backends.wasm.engine.reactor.EnginePool`, one
    instance a call."""

    def __init__(
        self,
        host: WasmHost,
        snapshot: SnapshotModule,
        sandbox: Sandbox,
        *,
        size: int,
        max_tokens: int,
        max_seq: int,
    ) -> None:
        self.host = host
        self.snapshot = snapshot
        self.sandbox = sandbox
        self.size = size
        # The first instance reads the layout every instance of the snapshot shares.
        first = EngineInstance(
            host, snapshot.template, sandbox, max_tokens=max_tokens, max_seq=max_seq
        )
        first.close()
        self.layout: EngineLayout = first.layout
        self._max_tokens, self._max_seq = max_tokens, max_seq
        self._slots = threading.BoundedSemaphore(size)
        self._free = size
        self._count_lock = threading.Lock()
        self.calls = 0  # instances made for calls

    def instance(self) -> EngineInstance:
        """A fresh instance of the snapshot under the package's sandbox (the caller
        closes it)."""
        return EngineInstance(
            self.host,
            self.snapshot.template,
            self.sandbox,
            max_tokens=self._max_tokens,
            max_seq=self._max_seq,
            layout=self.layout,
        )

    def run(self, payload: np.ndarray, batch: int, seq: int) -> np.ndarray:
        if not self._slots.acquire(timeout=self.sandbox.timeout_s):
            raise DeadlineExceeded(
                f"no engine slot became free within {self.sandbox.timeout_s:g} s"
            )
        with self._count_lock:
            self._free -= 1
            self.calls += 1
        try:
            inst = self.instance()
            try:
                return inst.run(payload, batch, seq)
            finally:
                inst.close()
        finally:
            with self._count_lock:
                self._free += 1
            self._slots.release()

    def available(self) -> int:
        """Calls that could start right now."""
        with self._count_lock:
            return self._free

    def profile(self, reset: bool = False) -> dict[str, float]:
        """Per-phase times live in each call's instance and go with it."""
        raise NotImplementedError(
            "isolation: request keeps no instance between calls, so no profile; "
            "measure with isolation: pooled"
        )

    live = 0  # instances held between calls: none

    def release(self) -> int:
        """Nothing idle to drop: every instance goes with its call."""
        return 0

    def close(self) -> None:
        """Nothing is held between calls."""
