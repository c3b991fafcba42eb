"""The wasi-nn host: module ``wasi_ephemeral_nn`` in the dialect WasmEdge uses.

Functions (all return a WasmEdge error code, results go through guest pointers):
``load``, ``load_by_name``, ``load_by_name_with_config``, ``init_execution_context``,
``set_input``, ``compute``, ``get_output``, ``compute_single``, ``get_output_single``,
``fini_single``, ``unload``, ``finalize_execution_context``.

:class:`NnHost` holds a package's preloaded graphs (``--nn-preload NAME:ENCODING:
TARGET:PATH``), shared by every call; :class:`NnCall` holds one call's graph and
context handles and is closed when the call ends, so a guest that forgets to finalize
leaks nothing. Guest mistakes (bad handles, out-of-bounds pointers, wrong tensor
shapes) are error codes returned to the guest, never host failures.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

from runtime.backends.devices import cuda_available
from runtime.backends.wasm.host import CallState, current_call
from runtime.backends.wasm.package import Preload
from runtime.backends.wasm.wasi_nn.types import (
    ENCODINGS,
    INVALID_ARGUMENT,
    INVALID_ENCODING,
    MISSING_MEMORY,
    MODEL_NOT_FOUND,
    NOT_FOUND,
    SUCCESS,
    TARGETS,
    UNSUPPORTED_OPERATION,
    NnError,
    NnTensor,
)
from runtime.errors import ConfigError, EdgeInferError, RuntimeFailure

__all__ = ["NnCall", "NnHost", "define_wasi_nn"]

log = logging.getLogger("edgeinfer.wasi_nn")
MODULE = "wasi_ephemeral_nn"
_ENCODING_NAMES = {v: k for k, v in ENCODINGS.items()}


class NnHost:
    """The graphs a package preloads, by name; loaded once, shared by all calls."""

    def __init__(
        self,
        preloads: list[Preload],
        paths: dict[str, Path],
        *,
        ggml_defaults: dict[str, Any] | None = None,
        threads: int = 1,
    ) -> None:
        self.ggml_defaults = ggml_defaults or {}
        self.threads = threads
        self._graphs: dict[str, Any] = {}
        self._lock = threading.Lock()
        for p in preloads:
            if p.encoding not in ("GGML", "ONNX"):
                raise ConfigError(
                    f"nn-preload {p.name!r}: encoding {p.encoding!r} is not supported here; "
                    "supported: GGML, ONNX"
                )
            if p.target not in TARGETS:
                raise ConfigError(
                    f"nn-preload {p.name!r}: target {p.target!r}; allowed: {', '.join(TARGETS)}"
                )
            if p.target == "GPU" and not cuda_available():
                raise ConfigError(f"nn-preload {p.name!r}: target GPU, but this host has none")
        self.preloads = {p.name: (p, paths[p.name]) for p in preloads}

    def graph(self, name: str) -> Any:
        """The preloaded graph ``name`` (loaded on first use)."""
        with self._lock:
            found = self._graphs.get(name)
            if found is not None:
                return found
            entry = self.preloads.get(name)
            if entry is None:
                known = ", ".join(self.preloads) or "none"
                raise NnError(MODEL_NOT_FOUND, f"no preloaded model {name!r} (preloaded: {known})")
            preload, path = entry
            if not path.is_file():
                raise NnError(MODEL_NOT_FOUND, f"preloaded model {name!r}: {path} does not exist")
            if preload.encoding == "GGML":
                from runtime.backends.wasm.wasi_nn.ggml import GgmlModel

                defaults = dict(self.ggml_defaults)
                if preload.target == "GPU" or (preload.target == "AUTO" and cuda_available()):
                    defaults.setdefault("n-gpu-layers", -1)
                graph: Any = GgmlModel(path, defaults, alias=name)
            else:
                from runtime.backends.wasm.wasi_nn.onnx import OnnxGraph

                graph = OnnxGraph(path, threads=self.threads)
            self._graphs[name] = graph
            return graph

    def close(self) -> None:
        with self._lock:
            for graph in self._graphs.values():
                if hasattr(graph, "close"):
                    graph.close()
            self._graphs.clear()


class NnCall(CallState):
    """One call's wasi-nn handles."""

    def __init__(
        self,
        nn: NnHost,
        *,
        stdout: Callable[[bytes], None] | None = None,
        deadline: float = math.inf,
    ) -> None:
        super().__init__(deadline)
        self.nn = nn
        self.stdout = stdout
        self.graphs: dict[int, Any] = {}
        self.contexts: dict[int, Any] = {}
        self._next = 0
        self.last_error = 0  # the latest non-zero code returned to the guest
        self.last_metadata: dict[str, Any] = {}

    def _handle(self) -> int:
        handle = self._next
        self._next += 1
        return handle

    def add_graph(self, graph: Any) -> int:
        handle = self._handle()
        self.graphs[handle] = graph
        return handle

    def context(self, handle: int) -> Any:
        ctx = self.contexts.get(handle)
        if ctx is None:
            raise NnError(INVALID_ARGUMENT, f"no execution context {handle}")
        return ctx

    def remember(self, ctx: Any) -> None:
        """Keep the GGML metadata of the call's latest generation (token counts)."""
        metadata = getattr(ctx, "metadata", None)
        generated = bool(getattr(ctx, "stop_reason", "")) or bool(getattr(ctx, "n_output", 0))
        if metadata is not None and generated:
            self.last_metadata = json.loads(metadata())

    def close(self) -> None:
        for ctx in self.contexts.values():
            self.remember(ctx)
            ctx.close()
        self.contexts.clear()
        self.graphs.clear()


def _graph_for_config(nn: NnHost, name: str, config: dict[str, Any]) -> Any:
    graph = nn.graph(name)
    from_path = getattr(graph, "defaults", None)
    if from_path is not None:  # a GGML model: a graph handle carries its options
        from runtime.backends.wasm.wasi_nn.ggml import GgmlGraph

        return GgmlGraph(graph, config)
    return graph


# Guest memory -----------------------------------------------------------------------
def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise NnError(MISSING_MEMORY, "the guest exports no memory")
    return memory


def _read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    memory = _memory(caller)
    if ptr < 0 or length < 0 or ptr + length > memory.data_len(caller):
        raise NnError(INVALID_ARGUMENT, f"guest buffer {ptr}+{length} is out of bounds")
    return bytes(memory.read(caller, ptr, ptr + length))


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    memory = _memory(caller)
    if ptr < 0 or ptr + len(data) > memory.data_len(caller):
        raise NnError(INVALID_ARGUMENT, f"guest buffer {ptr}+{len(data)} is out of bounds")
    if data:
        memory.write(caller, data, ptr)


def _u32(caller: wasmtime.Caller, ptr: int, value: int) -> None:
    _write(caller, ptr, struct.pack("<I", value))


def _u32s(caller: wasmtime.Caller, ptr: int, count: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}I", _read(caller, ptr, 4 * count))


def _tensor(caller: wasmtime.Caller, ptr: int) -> NnTensor:
    dims_ptr, ndims, ttype, data_ptr, data_len = _u32s(caller, ptr, 5)
    if ndims > 16:
        raise NnError(INVALID_ARGUMENT, f"a tensor of {ndims} dimensions")
    dims = _u32s(caller, dims_ptr, ndims) if ndims else ()
    return NnTensor(dims=tuple(dims), type=ttype & 0xFF, data=_read(caller, data_ptr, data_len))


# Host functions ---------------------------------------------------------------------
def _load(
    state: NnCall, caller: wasmtime.Caller, builders: int, n: int, enc: int, tgt: int, out: int
) -> None:
    if enc != ENCODINGS["ONNX"]:
        name = _ENCODING_NAMES.get(enc, str(enc))
        raise NnError(
            INVALID_ENCODING if name == str(enc) else UNSUPPORTED_OPERATION,
            f"load from bytes supports ONNX here, not {name} (GGML models are preloaded)",
        )
    if tgt not in TARGETS.values():
        raise NnError(INVALID_ARGUMENT, f"unknown execution target {tgt}")
    pairs = _u32s(caller, builders, 2 * n)
    if n != 1:
        raise NnError(INVALID_ARGUMENT, f"ONNX takes one builder (the model), not {n}")
    from runtime.backends.wasm.wasi_nn.onnx import OnnxGraph

    model = _read(caller, pairs[0], pairs[1])
    _u32(caller, out, state.add_graph(OnnxGraph(model, threads=state.nn.threads)))


def _load_by_name(
    state: NnCall, caller: wasmtime.Caller, name_ptr: int, name_len: int, out: int
) -> None:
    name = _read(caller, name_ptr, name_len).decode("utf-8", "replace")
    _u32(caller, out, state.add_graph(_graph_for_config(state.nn, name, {})))


def _load_by_name_with_config(
    state: NnCall, caller: wasmtime.Caller, np_: int, nl: int, cp: int, cl: int, out: int
) -> None:
    name = _read(caller, np_, nl).decode("utf-8", "replace")
    raw = _read(caller, cp, cl).decode("utf-8", "replace")
    try:
        config = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise NnError(INVALID_ARGUMENT, f"config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise NnError(INVALID_ARGUMENT, "config must be a JSON object")
    _u32(caller, out, state.add_graph(_graph_for_config(state.nn, name, config)))


def _init_execution_context(state: NnCall, caller: wasmtime.Caller, graph: int, out: int) -> None:
    found = state.graphs.get(graph)
    if found is None:
        raise NnError(NOT_FOUND, f"no graph {graph} (never loaded, or unloaded)")
    ctx = found.context(state.stdout)
    ctx.deadline_check = state.check_deadline
    handle = state._handle()
    state.contexts[handle] = ctx
    _u32(caller, out, handle)


def _set_input(state: NnCall, caller: wasmtime.Caller, ctx: int, index: int, tensor: int) -> None:
    state.context(ctx).set_input(index, _tensor(caller, tensor))


def _compute(state: NnCall, caller: wasmtime.Caller, ctx: int) -> int:
    context = state.context(ctx)
    code: int = context.compute()
    state.remember(context)
    return code


def _compute_single(state: NnCall, caller: wasmtime.Caller, ctx: int) -> int:
    context = state.context(ctx)
    code: int = context.compute_single()
    if code:
        state.remember(context)
    return code


def _output(single: bool) -> Callable[..., None]:
    def get(
        state: NnCall, caller: wasmtime.Caller, ctx: int, index: int, out: int, cap: int, n: int
    ) -> None:
        context = state.context(ctx)
        data = context.get_output_single(index) if single else context.get_output(index)
        if len(data) > cap:
            raise NnError(INVALID_ARGUMENT, f"output {index} is {len(data)} bytes; buffer {cap}")
        _write(caller, out, data)
        _u32(caller, n, len(data))

    return get


def _fini_single(state: NnCall, caller: wasmtime.Caller, ctx: int) -> None:
    context = state.context(ctx)
    state.remember(context)
    context.fini_single()


def _unload(state: NnCall, caller: wasmtime.Caller, graph: int) -> None:
    if state.graphs.pop(graph, None) is None:
        raise NnError(NOT_FOUND, f"no graph {graph}")


def _finalize(state: NnCall, caller: wasmtime.Caller, ctx: int) -> None:
    context = state.contexts.pop(ctx, None)
    if context is None:
        raise NnError(INVALID_ARGUMENT, f"no execution context {ctx}")
    state.remember(context)
    context.close()


_FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "load": (5, _load),
    "load_by_name": (3, _load_by_name),
    "load_by_name_with_config": (5, _load_by_name_with_config),
    "init_execution_context": (2, _init_execution_context),
    "set_input": (3, _set_input),
    "compute": (1, _compute),
    "get_output": (5, _output(single=False)),
    "compute_single": (1, _compute_single),
    "get_output_single": (5, _output(single=True)),
    "fini_single": (1, _fini_single),
    "unload": (1, _unload),
    "finalize_execution_context": (1, _finalize),
}


def _host_function(name: str, impl: Callable[..., Any]) -> Callable[..., int]:
    def call(caller: wasmtime.Caller, *args: int) -> int:
        state = current_call()
        if not isinstance(state, NnCall):
            state.fail(RuntimeFailure(f"wasi-nn {name} called outside a wasi-nn call"))
            raise wasmtime.WasmtimeError("no wasi-nn state")
        try:
            code = impl(state, caller, *args)
            if code:
                state.last_error = int(code)
            return SUCCESS if code is None else int(code)
        except NnError as exc:
            log.debug("wasi-nn %s: error %d: %s", name, exc.code, exc.message)
            state.last_error = exc.code
            return exc.code
        except EdgeInferError as exc:  # the deadline, raised from inside a long compute
            state.fail(exc)
            raise
        except Exception as exc:
            state.fail(RuntimeFailure(f"wasi-nn {name} failed in the host: {exc}"))
            raise

    return call


def define_wasi_nn(linker: wasmtime.Linker) -> None:
    """Add ``wasi_ephemeral_nn`` to a linker; calls reach the :class:`NnCall` that
    ``runtime.backends.wasm.host`` makes current for the duration of each guest call."""
    i32 = wasmtime.ValType.i32()
    for name, (arity, impl) in _FUNCTIONS.items():
        ty = wasmtime.FuncType([i32] * arity, [i32])
        linker.define_func(MODULE, name, ty, _host_function(name, impl), access_caller=True)
