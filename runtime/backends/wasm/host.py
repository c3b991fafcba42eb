"""The wasmtime host core: one Engine per process, the precompiled-module cache, and
the sandbox every guest call runs in.

Cost ladder (STYLE.md 7): a module is compiled once and its machine code serialized to
the state folder, keyed by the module's hash, the engine configuration and the wasmtime
version, so a later process deserializes it (an mmap) instead of compiling. Imports are
resolved once per module (:class:`Template`, a wasmtime ``InstancePre``); each call gets
a fresh ``Store`` with its own deadline (epoch interruption), memory limit (store
limits), WASI context (args, environment, read-only preopens, no sockets) and stdio.

Host functions find the state of the call they serve through :func:`current_call`:
a call runs start to end on one thread, so a thread-local is exact. A host function
that must fail the call records the error on that state (``state.fail(exc)``) and
traps; wasmtime-py keeps the Python exception of a trap in a process-wide global, which
concurrent calls would race on, so it is never relied upon.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wcomponent

from runtime.errors import (
    DeadlineExceeded,
    EdgeInferError,
    GuestLinkError,
    GuestOutOfMemory,
    GuestTrap,
)
from runtime.settings import Settings

__all__ = [
    "CallResult",
    "CallState",
    "Sandbox",
    "Template",
    "WasmHost",
    "current_call",
    "sandboxed_store",
    "translate",
    "wasm_host",
]

# Deadline granularity. Each tick wakes a thread, which can preempt llama.cpp's spinning
# threads during a generation, so ticks are few; the ticker sleeps while no guest runs.
EPOCH_TICK_S = 0.1
_local = threading.local()


@dataclass
class Sandbox:
    """What one call may see and use. Only ``mounts`` are visible, read-only."""

    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[tuple[Path, str]] = ()  # read-only
    writable_mounts: Sequence[tuple[Path, str]] = ()  # the CLI's --dir without :readonly
    timeout_s: float = 60.0
    max_memory_bytes: int = 1 << 30
    stdin: bytes | None = None
    stdout: Callable[[bytes], None] | None = None  # None: discarded (or inherited)
    stderr: Callable[[bytes], None] | None = None
    inherit_stdio: bool = False  # the CLI: the guest's stdio is the process's own
    program: str = "guest"


class CallState:
    """Per-call state host functions reach through :func:`current_call`. ABIs subclass
    it to hold their own per-call objects (wasi-nn execution contexts...)."""

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self.error: BaseException | None = None
        self.cancel = threading.Event()  # set when the caller went away

    def fail(self, error: BaseException) -> None:
        """Record why the call must end; the host function then traps."""
        if self.error is None:
            self.error = error

    def check_deadline(self) -> None:
        """Host functions that run long (a generation) call this between steps."""
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the guest call ran past its deadline")
        if self.cancel.is_set():
            raise DeadlineExceeded("the guest call was cancelled: its caller went away")


def current_call() -> CallState:
    state: CallState | None = getattr(_local, "state", None)
    if state is None:
        raise RuntimeError("a host function ran outside a guest call")
    return state


@dataclass(frozen=True)
class CallResult:
    exit_code: int
    memory_bytes: int


class _EpochTicker:
    """Advances the engine's epoch every tick while at least one guest call runs."""

    def __init__(self, engine: wasmtime.Engine, tick_s: float) -> None:
        self._engine = engine
        self._tick = tick_s
        self._active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="wasm-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def exit(self) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self._tick)
            self._engine.increment_epoch()


class Template:
    """A module with its imports resolved once (wasmtime ``InstancePre``)."""

    def __init__(self, host: WasmHost, module: wasmtime.Module, pre: wasmtime.InstancePre):
        self.host = host
        self.module = module
        self.pre = pre

    def run(self, sandbox: Sandbox, state: CallState | None = None) -> CallResult:
        """Run the guest's ``_start`` in a fresh store. Returns its exit code; raises
        :class:`DeadlineExceeded`, :class:`GuestOutOfMemory` or :class:`GuestTrap`, or
        the error a host function recorded on ``state``."""
        state = state or CallState()
        with sandboxed_store(self.host, sandbox, state) as store:
            instance = None
            try:
                instance = self.pre.instantiate(store)
                start = instance.exports(store)["_start"]
                assert isinstance(start, wasmtime.Func)
                start(store)
                code = 0
            except wasmtime.ExitTrap as exc:
                code = exc.code
            except BaseException as exc:
                raise translate(exc, state, _memory_bytes(store, instance), sandbox) from None
            finally:
                _local.state = None
            if state.error is not None:  # a host function failed but the guest went on
                raise translate(state.error, state, 0, sandbox)
            return CallResult(code, _memory_bytes(store, instance))


@contextmanager
def sandboxed_store(host: WasmHost, sandbox: Sandbox, state: CallState) -> Iterator[wasmtime.Store]:
    """A fresh store for one call: WASI context, memory limit, epoch deadline; ``state``
    is the current call of this thread until the block ends."""
    state.deadline = min(state.deadline, time.monotonic() + sandbox.timeout_s)
    store = wasmtime.Store(host.engine)
    if math.isfinite(sandbox.timeout_s):
        store.set_epoch_deadline(math.ceil(sandbox.timeout_s / host.tick_s) + 1)
    else:
        store.set_epoch_deadline(1 << 62)
    stdin_file = None
    try:
        wasi = _wasi_config(sandbox)
        if sandbox.stdin is not None:
            stdin_file = tempfile.NamedTemporaryFile(prefix="edgeinfer-stdin-", delete=False)
            stdin_file.write(sandbox.stdin)
            stdin_file.close()
            wasi.stdin_file = stdin_file.name
        store.set_wasi(wasi)
        store.set_limits(memory_size=sandbox.max_memory_bytes)
        _local.state = state
        host.ticker.enter()
        try:
            yield store
        finally:
            host.ticker.exit()
            _local.state = None
    finally:
        if stdin_file is not None:
            os.unlink(stdin_file.name)
        store.close()


def _wasi_config(sandbox: Sandbox) -> wasmtime.WasiConfig:
    wasi = wasmtime.WasiConfig()
    wasi.argv = [sandbox.program, *sandbox.args]
    wasi.env = list(sandbox.env.items())
    for host_dir, guest_dir in sandbox.mounts:
        wasi.preopen_dir(str(host_dir), guest_dir, fs_mutable=False)
    for host_dir, guest_dir in sandbox.writable_mounts:
        wasi.preopen_dir(str(host_dir), guest_dir, fs_mutable=True)
    if sandbox.inherit_stdio:
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        if sandbox.stdin is None:
            wasi.inherit_stdin()
    if sandbox.stdout is not None:
        wasi.stdout_custom = _writer(sandbox.stdout)
    if sandbox.stderr is not None:
        wasi.stderr_custom = _writer(sandbox.stderr)
    return wasi


def _writer(sink: Callable[[bytes], None]) -> Callable[[bytes], int]:
    def write(data: bytes) -> int:
        sink(bytes(data))
        return len(data)

    return write


def _memory_bytes(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
    if instance is None:
        return 0
    memory = instance.exports(store).get("memory")
    return memory.data_len(store) if isinstance(memory, wasmtime.Memory) else 0


def translate(exc: BaseException, state: CallState, memory: int, sandbox: Sandbox) -> BaseException:
    """A failure of a guest call, in the one error tree."""
    if state.error is not None:
        exc = state.error
    if isinstance(exc, EdgeInferError | KeyboardInterrupt | SystemExit):
        return exc
    limit_mib = sandbox.max_memory_bytes / (1 << 20)
    if isinstance(exc, wasmtime.Trap):
        if exc.trap_code is wasmtime.TrapCode.INTERRUPT:
            return DeadlineExceeded(
                f"guest {sandbox.program!r} ran past its deadline of {sandbox.timeout_s:g} s"
            )
        message = _trap_message(exc)
        # A guest whose malloc failed traps or exits on its own; "near the limit" is how
        # the host tells that apart from any other trap (no hook reports a denied grow).
        if memory + max(2 << 20, sandbox.max_memory_bytes // 20) >= sandbox.max_memory_bytes:
            return GuestOutOfMemory(
                f"guest {sandbox.program!r} trapped at its memory limit of {limit_mib:g} MiB "
                f"({message})"
            )
        return GuestTrap(f"guest {sandbox.program!r} trapped: {message}")
    if isinstance(exc, wasmtime.WasmtimeError):
        text = str(exc)
        if "Caused by:" in text and "wasm trap: interrupt" in text:
            return DeadlineExceeded(
                f"guest {sandbox.program!r} ran past its deadline of {sandbox.timeout_s:g} s"
            )
        if "wasm trap:" in text:  # a component's trap arrives as an error with a backtrace
            cause = text.rsplit("Caused by:", 1)[-1].strip().splitlines()[0]
            if "allocat" in text and "memory" in text:
                return GuestOutOfMemory(
                    f"guest {sandbox.program!r} ran out of memory (limit {limit_mib:g} MiB): "
                    f"{cause}"
                )
            return GuestTrap(f"guest {sandbox.program!r} trapped: {cause}")
        if "memory" in text and ("limit" in text or "grow" in text or "minimum" in text):
            return GuestOutOfMemory(
                f"guest {sandbox.program!r} needs more than its memory limit of "
                f"{limit_mib:g} MiB: {text.splitlines()[0]}"
            )
        return GuestTrap(f"guest {sandbox.program!r} failed: {text.splitlines()[0]}")
    return GuestTrap(f"guest {sandbox.program!r} failed in the host: {exc}")


def _trap_message(trap: wasmtime.Trap) -> str:
    """The cause line of wasmtime's trap text (it starts with a backtrace)."""
    lines = [line.strip() for line in (trap.message or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("0:", "Caused by")) and not line[0].isdigit():
            return line
    return str(trap.trap_code or "trap")


class WasmHost:
    """One per process: the Engine, the epoch ticker and the precompiled-module cache."""

    def __init__(self, settings: Settings, *, tick_s: float = EPOCH_TICK_S) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.wasm_simd = True
        # Relaxed SIMD (the engine guest's matrix multiply uses relaxed_madd), in its
        # fast, host-dependent form: a fused multiply-add where the CPU has one.
        config.wasm_relaxed_simd = True
        config.wasm_relaxed_simd_deterministic = False
        config.wasm_component_model = True
        config.cranelift_opt_level = "speed"
        # A module's data image is mapped copy-on-write into each new instance (a
        # snapshot's weights: ``runtime.backends.wasm.snapshot``). wasmtime's default, set here
        # because the snapshots' cost depends on it; wasmtime-py has no property for it.
        wasmtime._ffi.wasmtime_config_memory_init_cow_set(config.ptr(), True)
        self.config_key = "epoch=1 simd=1 relaxed-simd=1 component=1 opt=speed cow=1"
        self.engine = wasmtime.Engine(config)
        self.version = metadata.version("wasmtime")
        self.tick_s = tick_s
        self.ticker = _EpochTicker(self.engine, tick_s)
        self.cache_dir = settings.state_dir / "wasm" / "precompiled"
        self._modules: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _cache_file(self, wasm: bytes, kind: str) -> Path:
        h = hashlib.sha256(wasm)
        tag = f"\0{kind}\0{self.config_key}\0wasmtime {self.version}\0{os.uname().machine}"
        h.update(tag.encode())
        return self.cache_dir / f"{kind}-{h.hexdigest()[:32]}.cwasm"

    def _load(self, path: Path, kind: str) -> Any:
        """Deserialize the precompiled code of ``path`` or compile and cache it."""
        wasm = path.read_bytes()
        cached = self._cache_file(wasm, kind)
        with self._lock:
            found = self._modules.get(str(cached))
            if found is not None:
                return found
        cls: Any = wasmtime.Module if kind == "module" else wcomponent.Component
        loaded = None
        if cached.is_file():
            try:
                loaded = cls.deserialize_file(self.engine, str(cached))
            except wasmtime.WasmtimeError:
                cached.unlink(missing_ok=True)  # stale or truncated: compile again
        if loaded is None:
            try:
                loaded = cls(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise GuestLinkError(f"{path} is not a valid WebAssembly {kind}: {exc}") from None
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(loaded.serialize())
            os.replace(tmp, cached)
        with self._lock:
            self._modules[str(cached)] = loaded
        return loaded

    def module(self, path: Path) -> wasmtime.Module:
        module: wasmtime.Module = self._load(path, "module")
        return module

    def component(self, path: Path) -> wcomponent.Component:
        comp: wcomponent.Component = self._load(path, "component")
        return comp

    def template(
        self, module: wasmtime.Module, define: Callable[[wasmtime.Linker], None] | None = None
    ) -> Template:
        """Link WASI preview1 plus the imports ``define`` adds; an import nobody
        provides is a :class:`GuestLinkError` now, not a trap at the first call."""
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        if define is not None:
            define(linker)
        try:
            pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            missing = [
                f"{imp.module}::{imp.name}"
                for imp in module.imports
                if not _provided(linker, imp.module, imp.name or "")
            ]
            detail = f"; imports the host does not provide: {', '.join(missing)}" if missing else ""
            raise GuestLinkError(
                f"the guest cannot be linked{detail} ({str(exc).splitlines()[0]})"
            ) from None
        return Template(self, module, pre)


def _provided(linker: wasmtime.Linker, module: str, name: str) -> bool:
    store = wasmtime.Store(linker.engine)
    try:
        linker.get(store, module, name)
        return True
    except wasmtime.WasmtimeError:
        return False
    finally:
        store.close()


_hosts: dict[Path, WasmHost] = {}
_hosts_lock = threading.Lock()


def wasm_host(settings: Settings) -> WasmHost:
    """The process's host (one Engine per process and state folder)."""
    with _hosts_lock:
        host = _hosts.get(settings.state_dir)
        if host is None:
            host = _hosts[settings.state_dir] = WasmHost(settings)
        return host
