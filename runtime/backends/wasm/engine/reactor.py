"""The ``compute`` ABI: our own inference engine (``wasm-modules/engine``) in the sandbox.

Unlike a WASI command, the engine is a reactor that keeps its model: each instance loads
the weights once (``ei_init``) into its own linear memory and then serves many calls
(``ei_run``), so an instance lives in a long-lived store rather than a store per call.
``instances`` of them run in parallel in a pool of as many threads (wasmtime releases the
GIL while a guest runs). Each call still gets the package's deadline (the store's epoch
deadline is reset per call) and the store keeps the memory limit. An instance whose call
trapped is dropped and a fresh one is made on next use: a trap leaves its memory in an
unknown state.

The guest's ABI (all i32 unless noted; see ``wasm-modules/engine/README.md``):
``ei_init(max_tokens, max_seq) -> status``, ``ei_info(what) -> int``, ``ei_input() -> ptr``,
``ei_input_bytes() -> int``, ``ei_output() -> ptr``, ``ei_run(batch, seq) -> status``,
``ei_error() -> ptr`` (NUL-terminated message), ``ei_profile(slot) -> f64``. The model
files are named by ``EI_CONFIG`` and ``EI_WEIGHTS`` in the guest's environment.

The tasks (embeddings, classification) are :mod:`runtime.backends.wasm.abi.compute`.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import wasmtime
from pydantic import Field, ValidationError, model_validator

from runtime.backends.wasm.host import (
    CallState,
    Sandbox,
    Template,
    WasmHost,
    _wasi_config,
    translate,
)
from runtime.backends.wasm.reset import PageScan, dirty_ranges
from runtime.errors import BadInput, ConfigError, DeadlineExceeded
from runtime.spec.frozen import Frozen

__all__ = [
    "INFO_MAX_SEQ",
    "INFO_OUTPUT_WIDTH",
    "ComputeOptions",
    "EngineInstance",
    "EngineLayout",
    "EnginePool",
    "LaidOut",
]

INFO_KIND, INFO_OUTPUT_WIDTH, INFO_MAX_TOKENS, INFO_MAX_SEQ, INFO_INPUT_WIDTH, INFO_ABI = range(6)
KIND_BERT, KIND_GRAPH = 1, 2
ABI_VERSION = 1
LOAD_TIMEOUT_S = 300.0  # instantiating and loading the weights
PROFILE_SLOTS = ("gemm", "attention", "gelu", "layernorm", "embed", "other")


class ComputeOptions(Frozen):
    """``options`` of a ``compute`` package manifest."""

    instances: int = Field(
        0, ge=0, le=64, description="engine instances (threads); 0: the model's parallel, else CPUs"
    )
    max_tokens: int = Field(
        2048, ge=16, le=1 << 20, description="BERT: batch x sequence per guest call"
    )
    max_rows: int = Field(32, ge=1, le=4096, description="graph: rows per guest call")
    max_seq: int = Field(0, ge=0, description="BERT: longest sequence (0: the model's)")
    convert: Literal["onnx"] | None = Field(
        None, description="files.model is an ONNX model to convert to the engine's graph"
    )
    snapshot: bool = Field(
        True,
        description="start instances from a snapshot of the loaded engine, mapped "
        "copy-on-write (runtime.backends.wasm.snapshot); false: every instance loads the weights",
    )
    isolation: Literal["pooled", "request"] = Field(
        "pooled",
        description="pooled: warm instances serve call after call; request: a fresh "
        "instance from the snapshot per guest call, nothing of one call seen by the next",
    )

    @model_validator(mode="after")
    def _request_needs_snapshot(self) -> ComputeOptions:
        if self.isolation == "request" and not self.snapshot:
            raise ValueError(
                "isolation: request starts an instance per call from the snapshot; "
                "it needs snapshot: true"
            )
        return self

    @classmethod
    def parse(cls, raw: dict[str, object], where: str) -> ComputeOptions:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError.invalid(where, exc, "options.") from None


@dataclass(frozen=True)
class EngineLayout:
    """What an initialised engine reports of itself: the same for every instance of one
    snapshot (its buffers sit at the same addresses), so a fresh instance per request
    need not ask again."""

    kind: int
    output_width: int
    input_width: int
    max_tokens: int
    max_seq: int
    input_ptr: int
    input_bytes: int
    output_ptr: int


class LaidOut:
    """What an engine, a pool of engines or a pool of per-call engines tells its callers
    of the model: its :class:`EngineLayout`'s sizes."""

    layout: EngineLayout

    @property
    def kind(self) -> int:
        return self.layout.kind

    @property
    def output_width(self) -> int:
        return self.layout.output_width

    @property
    def input_width(self) -> int:
        return self.layout.input_width

    @property
    def max_tokens(self) -> int:
        return self.layout.max_tokens

    @property
    def max_seq(self) -> int:
        return self.layout.max_seq


class EngineInstance(LaidOut):
    """One engine in its own store: loads the model once, then computes batches.

    From a snapshot's template (``runtime.backends.wasm.engine.snapshot``) the instance starts
    with the model loaded (the snapshot exports no ``ei_init``); ``layout``, when given,
    is that snapshot's and saves asking the guest for it."""

    def __init__(
        self,
        host: WasmHost,
        template: Template,
        sandbox: Sandbox,
        *,
        max_tokens: int,
        max_seq: int,
        layout: EngineLayout | None = None,
    ) -> None:
        self.host = host
        self.sandbox = sandbox
        self.store = wasmtime.Store(host.engine)
        self.store.set_wasi(_wasi_config(sandbox))
        # After set_wasi: in wasmtime-py 50 setting WASI drops earlier store limits.
        self.store.set_limits(memory_size=sandbox.max_memory_bytes)
        self.instance: wasmtime.Instance | None = None
        self.healthy = True
        if layout is not None:
            self._call(lambda: self._instantiate(template))
            self.layout = layout
            return
        # Loading reads and packs every weight: it gets a load-sized deadline of its own.
        init_s = max(sandbox.timeout_s, LOAD_TIMEOUT_S)
        self._call(lambda: self._instantiate(template), init_s)
        if "ei_init" in self._exports:
            rc = self._call(lambda: self._fn("ei_init")(self.store, max_tokens, max_seq), init_s)
            if rc != 0:
                raise ConfigError(f"the engine could not load the model: {self.error()}")
        if self._fn("ei_info")(self.store, INFO_ABI) != ABI_VERSION:
            raise ConfigError("the engine guest speaks another ABI version than this host")
        self.layout = EngineLayout(
            kind=self.info(INFO_KIND),
            output_width=self.info(INFO_OUTPUT_WIDTH),
            input_width=self.info(INFO_INPUT_WIDTH),
            max_tokens=self.info(INFO_MAX_TOKENS),
            max_seq=self.info(INFO_MAX_SEQ),
            input_ptr=self._fn("ei_input")(self.store),
            input_bytes=self._fn("ei_input_bytes")(self.store),
            output_ptr=self._fn("ei_output")(self.store),
        )

    def _instantiate(self, template: Template) -> None:
        instance = template.pre.instantiate(self.store)
        self.instance = instance
        exports = instance.exports(self.store)
        self._exports = exports
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        init = exports.get("_initialize")
        if isinstance(init, wasmtime.Func):
            init(self.store)

    def _fn(self, name: str) -> wasmtime.Func:
        fn = self._exports.get(name)
        if not isinstance(fn, wasmtime.Func):
            raise ConfigError(f"the engine guest does not export {name!r}")
        return fn

    def info(self, what: int) -> int:
        value: int = self._fn("ei_info")(self.store, what)
        return value

    def error(self) -> str:
        ptr = self._fn("ei_error")(self.store)
        raw = bytes(self.memory.read(self.store, ptr, ptr + 512))
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _call(self, fn, timeout: float | None = None):  # type: ignore[no-untyped-def]
        """Run ``fn`` (guest calls) under the sandbox's deadline (or ``timeout``);
        translate failures, and mark the instance unusable after one."""
        timeout = self.sandbox.timeout_s if timeout is None else timeout
        ticks = math.ceil(timeout / self.host.tick_s) + 1 if math.isfinite(timeout) else 1 << 62
        self.store.set_epoch_deadline(ticks)
        self.host.ticker.enter()
        try:
            return fn()
        except BaseException as exc:
            self.healthy = False
            memory = self.memory.data_len(self.store) if self.instance is not None else 0
            raise translate(exc, CallState(), memory, self.sandbox) from None
        finally:
            self.host.ticker.exit()

    def run(self, payload: np.ndarray, batch: int, seq: int) -> np.ndarray:
        """Write ``payload`` to the input buffer, run, return the output rows. The payload
        is int32, or float32 for a graph whose input is float (passed as float32 here)."""
        dtype = np.float32 if payload.dtype == np.float32 else np.int32
        data = np.ascontiguousarray(payload, dtype=dtype).tobytes()
        layout = self.layout
        if len(data) > layout.input_bytes:
            raise BadInput(f"a batch of {len(data)} bytes exceeds the engine's planned input")
        self.memory.write(self.store, data, layout.input_ptr)
        rc = self._call(lambda: self._fn("ei_run")(self.store, batch, seq))
        if rc != 0:
            raise BadInput(f"the engine rejected the batch: {self.error()}")
        end = layout.output_ptr + batch * layout.output_width * 4
        raw = self.memory.read(self.store, layout.output_ptr, end)
        return np.frombuffer(bytes(raw), dtype=np.float32).reshape(batch, self.output_width).copy()

    def profile(self, reset: bool = False) -> dict[str, float]:
        """Milliseconds per phase inside the guest since the last reset."""
        fn = self._fn("ei_profile")
        out = {name: float(fn(self.store, i)) for i, name in enumerate(PROFILE_SLOTS)}
        if reset:
            fn(self.store, -1)
        return out

    def close(self) -> None:
        self.store.close()


class EnginePool(LaidOut):
    """Up to ``size`` engine instances, each used by one thread at a time.

    The first instance is made up front (it reads the layout); the others are made on
    demand when a call finds none free, so an idle model holds only what it used.
    :meth:`release` drops every idle instance (a model scaled to zero inside the WASM
    host holds none; from a snapshot the next one costs a fraction of a millisecond).
    With ``park`` (instances from a snapshot, where ``runtime.backends.wasm.reset`` can
    scan their pages) it keeps one, *parked*: the pages its calls wrote are dropped, so
    it holds the snapshot's state again (no request's data, no private pages) while the
    weights' pages stay mapped; the next call from zero then does not fault every
    weight page in again (a new instance's first touch: 700-1500 page faults).
    An instance whose call failed in the guest is dropped; the next call makes another.
    """

    def __init__(
        self,
        host: WasmHost,
        template: Template,
        sandbox: Sandbox,
        *,
        size: int,
        max_tokens: int,
        max_seq: int,
        park: PageScan | None = None,
        park_memory_bytes: int = 0,
    ) -> None:
        self.host = host
        self.template = template
        self.sandbox = sandbox
        self.size = size
        self._park, self._park_bytes = park, park_memory_bytes
        self._parked: EngineInstance | None = None  # idle, in the snapshot's state
        self._max_tokens, self._max_seq = max_tokens, max_seq
        self._free: queue.Queue[EngineInstance] = queue.Queue()
        self._all: list[EngineInstance] = []
        self._lock = threading.Lock()
        self._closed = False
        self._making = 0  # instances being made outside the lock
        first = self._make()
        self.layout = first.layout
        self._free.put(first)

    def _make(self) -> EngineInstance:
        inst = EngineInstance(
            self.host,
            self.template,
            self.sandbox,
            max_tokens=self._max_tokens,
            max_seq=self._max_seq,
        )
        with self._lock:
            self._all.append(inst)
        return inst

    def _take(self) -> EngineInstance:
        """A free instance; a new one while fewer than ``size`` exist; else wait."""
        try:
            return self._unparked(self._free.get_nowait())
        except queue.Empty:
            pass
        with self._lock:
            room = len(self._all) + self._making < self.size and not self._closed
            if room:  # reserve the place: another thread must not overshoot ``size``
                self._making += 1
        if room:
            try:
                return self._make()
            finally:
                with self._lock:
                    self._making -= 1
        try:
            return self._unparked(self._free.get(timeout=self.sandbox.timeout_s))
        except queue.Empty:
            raise DeadlineExceeded(
                f"no engine instance became free within {self.sandbox.timeout_s:g} s"
            ) from None

    def _unparked(self, inst: EngineInstance) -> EngineInstance:
        with self._lock:
            if inst is self._parked:
                self._parked = None
        return inst

    def run(self, payload: np.ndarray, batch: int, seq: int) -> np.ndarray:
        inst = self._take()
        try:
            return inst.run(payload, batch, seq)
        finally:
            if inst.healthy and not self._closed:
                self._free.put(inst)
            else:  # a trap leaves its memory unknown: the next call makes a new one
                with self._lock:
                    if inst in self._all:
                        self._all.remove(inst)
                inst.close()

    def fill(self) -> None:
        """Make instances up to ``size`` now (for instances that each load the weights,
        so that the first concurrent calls do not pay for it)."""
        while True:
            with self._lock:
                if len(self._all) + self._making >= self.size or self._closed:
                    return
            self._free.put(self._make())

    def available(self) -> int:
        """Calls that could start right now (free instances, plus room for new ones)."""
        with self._lock:
            return self._free.qsize() + max(0, self.size - len(self._all) - self._making)

    @property
    def live(self) -> int:
        """Instances that exist now (idle or busy), the parked one not counted."""
        with self._lock:
            return len(self._all) - (self._parked is not None)

    @property
    def parked(self) -> int:
        """1 while an instance is parked (see the class), else 0."""
        with self._lock:
            return int(self._parked is not None)

    def release(self) -> int:
        """Drop every idle instance (busy ones finish and stay), parking one if the
        pool parks; how many were released."""
        released = 0
        keep: EngineInstance | None = None
        while True:
            try:
                inst = self._unparked(self._free.get_nowait())
            except queue.Empty:
                break
            released += 1
            if keep is None and self._parkable(inst):
                keep = inst
                continue
            with self._lock:
                self._all.remove(inst)
            inst.close()
        if keep is not None:
            with self._lock:
                self._parked = keep
            self._free.put(keep)
        return released

    def _parkable(self, inst: EngineInstance) -> bool:
        """Drop the pages ``inst``'s calls wrote; whether it is now in the snapshot's
        state (a memory that grew cannot go back)."""
        if self._park is None or not inst.healthy or self._closed:
            return False
        if inst.memory.data_len(inst.store) != self._park_bytes:
            return False
        self._park.drop(dirty_ranges(self._park, inst.memory, inst.store))
        return True

    def profile(self, reset: bool = False) -> dict[str, float]:
        """Summed over idle instances (call when no request is in flight)."""
        total: dict[str, float] = {}
        held = []
        while True:
            try:
                held.append(self._free.get_nowait())
            except queue.Empty:
                break
        try:
            for inst in held:
                for k, v in inst.profile(reset).items():
                    total[k] = total.get(k, 0.0) + v
        finally:
            for inst in held:
                self._free.put(inst)
        return total

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for inst in self._all:
                inst.close()
            self._all.clear()


def default_instances(options: ComputeOptions, parallel: int, cores: int) -> int:
    """``options.instances``, else the model's ``parallel`` when above 1, else one per
    core the replica may use (``cores``: ``Settings.threads``, the core budget's share)."""
    if options.instances:
        return options.instances
    return parallel if parallel > 1 else max(1, cores)
