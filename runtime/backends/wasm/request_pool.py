"""``isolation: request`` for the engine: every guest call starts from the model's
snapshot (``runtime.backends.wasm.snapshot``), as Spin runs a component per request.

Nothing one call leaves in the guest (its input, its activations, a half-finished
state after a trap) is seen by the next. Two ways to get there, the same state:

- **reset in place** (where ``PAGEMAP_SCAN`` works, ``runtime.backends.wasm.reset``):
  after a call returns, the pages it wrote get the snapshot's bytes back, copied from
  a pristine instance of the snapshot that never runs; the instance, its store and its
  sandbox serve the next call. The weights' pages stay mapped and the written pages
  stay resident, so the cost is one scan of the memory's page table (a bit test per
  entry where userfaultfd's write-protect tracks the writes) and a copy of what the
  call wrote, not a new instance's first touch of every page.
  An instance whose call trapped, or whose memory grew, is dropped instead.
- **a fresh instance per call** (no scan, or a guest with more mutable state than a
  stack pointer): a new store and a copy-on-write mapping of the image per call.

Each instance gets the package's sandbox (read-only mounts, memory limit in its store,
epoch deadline per call). At most ``size`` calls run at once (one per thread of the
guest's executor), like the pooled instances they stand in for.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtime.backends.wasm.engine.reactor import EngineInstance, EngineLayout, LaidOut
from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.backends.wasm.reset import (
    PageScan,
    Restorer,
    WriteTracker,
    base_address,
    page_scan,
    resettable,
    write_tracker,
)
from runtime.backends.wasm.snapshot import SnapshotModule
from runtime.errors import DeadlineExceeded

__all__ = ["RequestPool"]


class RequestPool(LaidOut):
    """The interface of :class:`~runtime.backends.wasm.engine.reactor.EnginePool`, each
    call on an instance in the snapshot's state."""

    def __init__(
        self,
        host: WasmHost,
        snapshot: SnapshotModule,
        sandbox: Sandbox,
        *,
        size: int,
        max_tokens: int,
        max_seq: int,
        reset: bool = True,
    ) -> None:
        self.host = host
        self.snapshot = snapshot
        self.sandbox = sandbox
        self.size = size
        self._scan: PageScan | None = (
            page_scan() if reset and resettable(snapshot.mutable_globals) else None
        )
        self._tracker: WriteTracker | None = write_tracker() if self._scan is not None else None
        self._restorers: dict[int, Restorer] = {}  # id(instance) -> its restorer
        self._resetter = ThreadPoolExecutor(max_workers=size, thread_name_prefix="wasm-reset")
        self._resetting = 0
        self._settled = threading.Condition()
        self._parked: EngineInstance | None = None
        # The first instance reads the layout every instance of the snapshot shares.
        first = EngineInstance(
            host, snapshot.template, sandbox, max_tokens=max_tokens, max_seq=max_seq
        )
        self.layout: EngineLayout = first.layout
        self._max_tokens, self._max_seq = max_tokens, max_seq
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.SimpleQueue[EngineInstance] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = size
        self._live = 0
        self._closed = False
        self.calls = 0  # guest calls served
        self.fresh = 0  # instances made to serve calls (the first included)
        self.resets = 0  # instances put back to the snapshot's state in place
        self.reset_pages = 0  # pages those resets copied back
        self.reset_seconds = 0.0  # time spent resetting (scan and copy)
        # Resets copy the written pages back from a pristine instance that never runs
        # (its pages are the image's, shared in the page cache, or the zero page).
        self._pristine: EngineInstance | None = None
        if self._scan is not None:
            self._pristine = self.instance()
            self._pristine_at = base_address(self._pristine.memory, self._pristine.store)
            self._live = 1
            self.fresh = 1
            self._restorer(first)
            self._idle.put(first)
        else:
            first.close()

    @property
    def resets_in_place(self) -> bool:
        """Whether calls reuse reset instances (else a fresh instance per call)."""
        return self._scan is not None

    def instance(self) -> EngineInstance:
        """A fresh instance of the snapshot under the package's sandbox (the caller
        closes it)."""
        inst = EngineInstance(
            self.host,
            self.snapshot.template,
            self.sandbox,
            max_tokens=self._max_tokens,
            max_seq=self._max_seq,
            layout=self.layout,
        )
        return inst

    def _restorer(self, inst: EngineInstance) -> None:
        """Made before the instance's first call (it write-protects the memory)."""
        assert self._scan is not None
        self._restorers[id(inst)] = Restorer(
            self._scan,
            self._tracker,
            target=base_address(inst.memory, inst.store),
            source=self._pristine_at,
            length=inst.memory.data_len(inst.store),
        )

    def _take(self) -> EngineInstance:
        try:
            inst = self._idle.get_nowait()
            with self._lock:
                if inst is self._parked:
                    self._parked = None
            return inst
        except queue.Empty:
            inst = self.instance()
            self._restorer(inst)
            with self._lock:
                self._live += 1
                self.fresh += 1
            return inst

    def run(self, payload: np.ndarray, batch: int, seq: int) -> np.ndarray:
        if not self._slots.acquire(timeout=self.sandbox.timeout_s):
            raise DeadlineExceeded(
                f"no engine slot became free within {self.sandbox.timeout_s:g} s"
            )
        with self._lock:
            self._free -= 1
            self.calls += 1
        if self._scan is None:
            try:
                inst = self.instance()
                with self._lock:
                    self.fresh += 1
                try:
                    return inst.run(payload, batch, seq)
                finally:
                    inst.close()
            finally:
                self._give_slot()
        try:
            inst = self._take()
        except BaseException:
            self._give_slot()
            raise
        try:
            return inst.run(payload, batch, seq)
        finally:
            # The reset runs after the answer is handed back (as Spin tears an instance
            # down after the response): the slot, and so the instance, frees once the
            # reset is done, so no call ever sees what this one wrote.
            with self._settled:
                self._resetting += 1
            try:
                self._resetter.submit(self._reset_and_free, inst)
            except RuntimeError:  # closed meanwhile
                self._reset_and_free(inst)

    def _reset_and_free(self, inst: EngineInstance) -> None:
        try:
            self._put_back(inst)
        finally:
            self._give_slot()
            with self._settled:
                self._resetting -= 1
                self._settled.notify_all()

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until no reset is running (every slot is free again between calls);
        whether that happened within ``timeout``."""
        with self._settled:
            return self._settled.wait_for(lambda: self._resetting == 0, timeout)

    def _give_slot(self) -> None:
        with self._lock:
            self._free += 1
        self._slots.release()

    def _put_back(self, inst: EngineInstance) -> None:
        """Reset ``inst`` to the snapshot's state and keep it, or drop it."""
        assert self._scan is not None
        kept = False
        try:
            if inst.healthy and not self._closed:
                start = time.perf_counter()
                size = inst.memory.data_len(inst.store)
                if size == self.snapshot.memory_bytes:  # grown memory cannot shrink
                    pages = self._restorers[id(inst)].reset()
                    with self._lock:
                        self.resets += 1
                        self.reset_pages += pages
                        self.reset_seconds += time.perf_counter() - start
                    kept = True
        finally:
            if kept:
                self._idle.put(inst)
            else:
                self._drop(inst)

    def _drop(self, inst: EngineInstance) -> None:
        with self._lock:
            self._live -= 1
        self._restorers.pop(id(inst), None)
        inst.close()

    def available(self) -> int:
        """Calls that could start right now."""
        with self._lock:
            return self._free

    def profile(self, reset: bool = False) -> dict[str, float]:
        """Per-phase times live in each call's instance and go with it."""
        raise NotImplementedError(
            "isolation: request keeps no instance's state between calls, so no profile; "
            "measure with isolation: pooled"
        )

    @property
    def live(self) -> int:
        """Instances held now (each in the snapshot's state while idle), the parked one
        not counted."""
        with self._lock:
            return self._live - (self._parked is not None)

    def release(self) -> int:
        """Drop every idle instance but one, kept *parked*: already in the snapshot's
        state, its written pages are dropped too (no private memory), its weights' pages
        stay mapped, so the next call from zero does not fault them in; how many were
        released (the parked one counted). A closed pool keeps none."""
        released = 0
        keep: EngineInstance | None = None
        while True:
            try:
                inst = self._idle.get_nowait()
            except queue.Empty:
                break
            released += 1
            if keep is None and not self._closed and self._scan is not None:
                restorer = self._restorers[id(inst)]
                self._scan.drop(
                    restorer.hot or restorer.scan.written(restorer.target, restorer.length)
                )
                keep = inst
                continue
            self._drop(inst)
        with self._lock:
            self._parked = keep
        if keep is not None:
            self._idle.put(keep)
        return released

    @property
    def parked(self) -> int:
        """1 while an idle instance is parked by :meth:`release`, else 0."""
        with self._lock:
            return int(self._parked is not None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._resetter.shutdown(wait=True)
        self.release()  # closed: keeps none
        if self._pristine is not None:
            self._pristine.close()
            self._pristine = None
