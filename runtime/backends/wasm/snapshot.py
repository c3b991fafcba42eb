"""Snapshots of initialised guests (as Wizer makes them), precompiled and cached on disk.

A guest whose start-up is expensive (the engine's ``ei_init`` reads and packs ~90 MB
of weights) runs that start-up once: :func:`capture` instantiates the guest, runs its
initialisation, then reads its linear memory and its mutable globals and writes a NEW
module whose data segments are that memory image (its non-zero 4 KiB blocks, joined
across enough zero gaps that wasmtime maps it copy-on-write: :func:`cow_dense`), whose
globals start at the captured values, and whose start function and initialisation
exports are gone. An instance of the snapshot starts where the original was after its
initialisation, and must not be initialised again.

:class:`SnapshotCache` compiles that module once, serializes its machine code to
``$EDGEINFER_HOME/wasm/snapshots/`` keyed by everything that decides the image (the
guest's hash, the hashes of the files the initialisation reads, its arguments, the
sandbox's environment, args and guest paths, the engine settings, the wasmtime version
and the CPU architecture) and maps it back with ``Module.deserialize_file``. With the
engine's ``memory_init_cow`` (set by ``WasmHost``) each new instance maps the image
copy-on-write from that file: instantiation costs a ``mmap``, not a copy, and every
instance of a model in every process shares the image's pages in the page cache.
Cache files are only ever replaced (``os.replace``), never rewritten in place: running
hosts map them, and a mapped file truncated under a process is a SIGBUS.

Hazards a recipe must respect (Wizer's own): whatever WASI state the initialisation
leaves behind is frozen in memory (the environment libc read, its preopen table), so
an instance of the snapshot must run under the same ``Sandbox`` (same env, args and
mounts in the same order) it was captured under; files the initialisation opened must
be closed again; tables are not captured (a guest that grows or sets its tables during
initialisation is not supported; C guests do not).

The interface the one-host-for-many-models work uses::

    cache = snapshot_cache(host)                 # one per WasmHost
    snap = cache.get(recipe)                     # SnapshotModule, built or mapped
    instance = snap.instantiate(store)           # store from the recipe's sandbox
    cache.put(snap)                              # its last user gone: unmapped

For the engine, ``runtime.backends.wasm.engine.snapshot.engine_recipe`` makes the recipe, and
``EngineInstance(host, snap.template, sandbox, ..., layout=...)`` an instance.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import wasmtime

from runtime.backends.wasm.host import (
    CallState,
    Sandbox,
    Template,
    WasmHost,
    sandboxed_store,
    translate,
)
from runtime.backends.wasm.wasm_binary import (
    KIND_GLOBAL,
    KIND_MEMORY,
    NUMERIC,
    DataSegment,
    encode_global_init,
    parse_module,
    with_exports,
    write_snapshot_module,
)
from runtime.errors import EdgeInferError, GuestLinkError, SnapshotUnsupported

__all__ = [
    "BLOCK",
    "SnapshotCache",
    "SnapshotModule",
    "SnapshotRecipe",
    "capture",
    "cow_dense",
    "file_digest",
    "snapshot_cache",
]

FORMAT = "edgeinfer-snapshot 3"  # bump when the image or the rewrite changes meaning
BLOCK = 4096  # granularity of the non-zero scan: a page of the host
WASM_PAGE = 65536
COW_ALWAYS = 16 << 20  # wasmtime's memory_guaranteed_dense_image_size default
_GLOBAL_EXPORT = "__edgeinfer_snapshot_global_{}"
_MEMORY_EXPORT = "__edgeinfer_snapshot_memory"

Init = Callable[[wasmtime.Store, wasmtime.Instance], None]
Define = Callable[[wasmtime.Linker], None]


@dataclass(frozen=True)
class SnapshotRecipe:
    """How to make one snapshot.

    ``init`` runs once on a fresh instance (after the guest's ``_initialize`` export, if
    it has one) and raises on failure; ``init_key`` names what it does with which
    arguments (``"ei_init(2048, 0)"``), for the cache key. ``inputs`` are the host files
    ``init`` reads through the sandbox's mounts (their contents are hashed). ``sandbox``
    is the one the snapshot is captured under and that its instances must run under;
    its timeout bounds ``init`` (``init_timeout_s`` when longer). ``drop_exports`` are
    removed from the snapshot: the initialisation exports nobody may call again.
    """

    guest: Path
    sandbox: Sandbox
    init: Init
    init_key: str
    inputs: Sequence[Path] = ()
    drop_exports: frozenset[str] = frozenset({"_initialize"})
    define: Define | None = None
    init_timeout_s: float = 300.0
    name: str = field(default="guest")


@dataclass(frozen=True)
class SnapshotModule:
    """A snapshot, compiled and mapped from its cache file, its imports resolved once."""

    path: Path  # the precompiled module (.cwasm) the image is mapped from
    template: Template
    image_bytes: int  # bytes of data in the image (non-zero blocks)
    memory_bytes: int  # the memory an instance starts with
    mutable_globals: tuple[int, ...] = ()  # their value types (``reset.resettable``)
    key: str = ""  # in its SnapshotCache

    @property
    def module(self) -> wasmtime.Module:
        return self.template.module

    def instantiate(self, store: wasmtime.Store) -> wasmtime.Instance:
        """A new instance in ``store`` (whose WASI context and limits come from the
        recipe's sandbox), already initialised: call no initialisation export."""
        return self.template.pre.instantiate(store)


def capture(host: WasmHost, recipe: SnapshotRecipe) -> tuple[bytes, int]:
    """Run the recipe's initialisation and return (the snapshot module, its image's
    data bytes). Raises :class:`SnapshotUnsupported` for a module it cannot rewrite and
    the error tree's translation of a failure of the initialisation."""
    wasm = recipe.guest.read_bytes()
    layout = parse_module(wasm)
    if layout.memory_limits is None:
        raise SnapshotUnsupported(f"{recipe.guest.name} defines no memory to snapshot")
    mutable = [g for g in layout.globals if g.mutable]
    for g in mutable:
        if g.valtype not in NUMERIC:
            raise SnapshotUnsupported(
                f"{recipe.guest.name}: mutable global {g.index} has type {g.valtype:#x}"
            )
    extra = [(_GLOBAL_EXPORT.format(g.index), KIND_GLOBAL, g.index) for g in mutable]
    memory_index = next((i for _, k, i in layout.exports if k == KIND_MEMORY), None)
    if memory_index is None:
        extra.append((_MEMORY_EXPORT, KIND_MEMORY, 0))
    instrumented = with_exports(layout, extra)
    try:
        module = wasmtime.Module(host.engine, instrumented)
    except wasmtime.WasmtimeError as exc:
        raise GuestLinkError(f"{recipe.guest} is not a valid WebAssembly module: {exc}") from None
    template = host.template(module, recipe.define)
    init_s = max(recipe.sandbox.timeout_s, recipe.init_timeout_s)
    sandbox = replace(recipe.sandbox, timeout_s=init_s)
    state = CallState()
    with sandboxed_store(host, sandbox, state) as store:
        exports = None
        try:
            instance = template.pre.instantiate(store)
            exports = instance.exports(store)
            start = exports.get("_initialize")
            if isinstance(start, wasmtime.Func):
                start(store)
            recipe.init(store, instance)
        except EdgeInferError:
            raise
        except BaseException as exc:
            size = _memory(exports, memory_index).data_len(store) if exports is not None else 0
            raise translate(exc, state, size, sandbox) from None
        values: dict[int, bytes] = {}
        for g in mutable:
            glob = exports[_GLOBAL_EXPORT.format(g.index)]
            assert isinstance(glob, wasmtime.Global)
            values[g.index] = encode_global_init(g.valtype, glob.value(store))
        memory = _memory(exports, memory_index)
        size = memory.data_len(store)
        image = _view(memory, store, size)
        segments = nonzero_segments(image)
        snapshot = write_snapshot_module(
            layout,
            pages=size // WASM_PAGE,
            globals_=values,
            segments=cow_dense(segments, image),
            drop_exports=set(recipe.drop_exports),
        )
        return snapshot, sum(len(s.data) for s in segments)


def _memory(exports: Mapping[str, Any], index: int | None) -> wasmtime.Memory:
    name = _MEMORY_EXPORT
    if index is not None:
        name = next(n for n, e in exports.items() if isinstance(e, wasmtime.Memory))
    memory = exports[name]
    assert isinstance(memory, wasmtime.Memory)
    return memory


def _view(memory: wasmtime.Memory, store: wasmtime.Store, size: int) -> np.ndarray:
    """The instance's linear memory as a numpy array, without a copy (valid while the
    store lives and the memory does not grow)."""
    ptr = ctypes.cast(memory.data_ptr(store), ctypes.POINTER(ctypes.c_uint8))
    return np.ctypeslib.as_array(ptr, shape=(size,))


def nonzero_segments(image: np.ndarray, block: int = BLOCK) -> list[DataSegment]:
    """Data segments covering every non-zero ``block`` of ``image`` (a uint8 array whose
    length is a multiple of ``block``), adjacent blocks merged into one segment."""
    blocks = image.reshape(-1, block)
    live = blocks.view(np.uint64).any(axis=1) if block % 8 == 0 else blocks.any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], live.astype(np.int8), [0]))))
    segments = []
    for start, end in zip(edges[0::2], edges[1::2], strict=True):
        lo, hi = int(start) * block, int(end) * block
        segments.append(DataSegment(lo, image[lo:hi].tobytes()))
    return segments


def cow_dense(segments: list[DataSegment], image: np.ndarray) -> list[DataSegment]:
    """``segments`` (sorted, disjoint, cut from ``image``) with enough of the zero gaps
    between them filled in, smallest gaps first, that wasmtime builds a copy-on-write
    image of them.

    wasmtime (``try_static_init``) builds a module's memory image at compile time only
    if the image is dense: the bytes of its data segments must be more than half of the
    span from the first segment's start to the last one's end (or the span under
    16 MiB); otherwise every instantiation copies the data. An engine's memory has zero
    stretches (its stack, activation buffers), so a snapshot of it would miss the image
    without this. The image spans the range either way; the fill only makes the
    module larger (by at most half the span)."""
    if len(segments) < 2:
        return segments
    span = segments[-1].offset + len(segments[-1].data) - segments[0].offset
    data = sum(len(seg.data) for seg in segments)
    if span < COW_ALWAYS or span < 2 * data:
        return segments
    gaps = sorted(
        range(len(segments) - 1),
        key=lambda i: segments[i + 1].offset - segments[i].offset - len(segments[i].data),
    )
    fill: set[int] = set()
    for i in gaps:
        if span < 2 * data:
            break
        data += segments[i + 1].offset - segments[i].offset - len(segments[i].data)
        fill.add(i)
    out: list[DataSegment] = []
    start = 0
    for i in range(len(segments)):
        if i not in fill:  # segment i ends a run of joined segments
            lo = segments[start].offset
            hi = segments[i].offset + len(segments[i].data)
            out.append(DataSegment(lo, image[lo:hi].tobytes()) if start != i else segments[i])
            start = i + 1
    return out


_digests: dict[str, str] = {}
_digests_lock = threading.Lock()


def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file's contents, remembered while the file's path, device, inode,
    size and modification time stay the same: for the process, and across processes in
    ``memo_dir`` when given (so a new host does not read 90 MB of weights to find its
    snapshot). A file rewritten in place within the clock's resolution with the same
    size would fool it; model files are replaced, not edited."""
    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    with _digests_lock:
        found = _digests.get(key)
    memo = memo_dir / key if memo_dir is not None else None
    if found is None and memo is not None:
        try:
            text = memo.read_text().strip()
            found = text if len(text) == 64 else None
        except OSError:
            found = None
    if found is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        found = h.hexdigest()
        if memo is not None:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(found + "\n")
            os.replace(tmp, memo)
    with _digests_lock:
        _digests[key] = found
    return found


class SnapshotCache:
    """The snapshots of one :class:`WasmHost`: made once per machine, mapped once per
    process (every model naming the same recipe shares one :class:`SnapshotModule`)."""

    def __init__(self, host: WasmHost) -> None:
        self.host = host
        self.folder = host.cache_dir.parent / "snapshots"
        self._loaded: dict[str, SnapshotModule] = {}
        self._users: dict[str, int] = {}  # key -> models using it (get minus put)
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.captures = 0  # snapshots made by this process (a cache miss each)

    def key(self, recipe: SnapshotRecipe) -> str:
        """The cache key: what decides the image and the machine code."""
        h = hashlib.sha256()
        parts = [
            FORMAT,
            hashlib.sha256(recipe.guest.read_bytes()).hexdigest(),
            *(file_digest(p, self.folder / "digests") for p in recipe.inputs),
            recipe.init_key,
            repr(sorted(recipe.sandbox.env.items())),
            repr(list(recipe.sandbox.args)),
            repr([guest for _, guest in recipe.sandbox.mounts]),
            repr(sorted(recipe.drop_exports)),
            self.host.config_key,
            f"wasmtime {self.host.version}",
            os.uname().machine,
        ]
        for part in parts:
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:32]

    def get(self, recipe: SnapshotRecipe) -> SnapshotModule:
        """The recipe's snapshot: from this process's memory, else mapped from the disk
        cache, else captured, compiled and written there first. Thread-safe; concurrent
        callers of one recipe capture it once. Each call counts a user, whom
        :meth:`put` takes off again."""
        key = self.key(recipe)
        with self._lock:
            found = self._loaded.get(key)
            if found is not None:
                self._users[key] = self._users.get(key, 0) + 1
                return found
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                found = self._loaded.get(key)
            if found is None:
                found = self._load(key, recipe)
                with self._lock:
                    self._loaded[key] = found
            with self._lock:
                self._users[key] = self._users.get(key, 0) + 1
            return found

    def put(self, snapshot: SnapshotModule) -> bool:
        """One user of ``snapshot`` fewer (a model unloaded or evicted); when none is
        left, this process drops its mapping (once the users' instances are gone its
        image and code are unmapped; the disk cache stays). Whether it was dropped."""
        with self._lock:
            left = self._users.get(snapshot.key, 0) - 1
            if left > 0:
                self._users[snapshot.key] = left
                return False
            self._users.pop(snapshot.key, None)
            return self._loaded.pop(snapshot.key, None) is not None

    def held(self) -> int:
        """Snapshots this process holds mapped."""
        with self._lock:
            return len(self._loaded)

    def forget(self, recipe: SnapshotRecipe) -> bool:
        """Drop this process's mapping of the recipe's snapshot (the disk cache stays):
        once no instance of it is alive its image is unmapped, and the next
        :meth:`get` maps it again. For a host that must free room for other models."""
        key = self.key(recipe)
        with self._lock:
            self._users.pop(key, None)
            return self._loaded.pop(key, None) is not None

    def _load(self, key: str, recipe: SnapshotRecipe) -> SnapshotModule:
        path = self.folder / f"{recipe.name}-{key}.cwasm"
        meta = path.with_suffix(".meta")
        module = None
        if path.is_file() and meta.is_file():
            try:
                module = wasmtime.Module.deserialize_file(self.host.engine, str(path))
                image_bytes = int(meta.read_text().split()[0])
            except (wasmtime.WasmtimeError, ValueError, IndexError, OSError):
                module = None  # stale or truncated: capture again
        if module is None:
            wasm, image_bytes = capture(self.host, recipe)
            try:
                compiled = wasmtime.Module(self.host.engine, wasm)
            except wasmtime.WasmtimeError as exc:  # a bug of the rewrite, not of the guest
                raise SnapshotUnsupported(
                    f"the snapshot of {recipe.guest.name} is not valid: {exc}"
                ) from None
            self.folder.mkdir(parents=True, exist_ok=True)
            tag = f".tmp{os.getpid()}.{threading.get_ident()}"
            tmp = path.with_name(path.name + tag)
            tmp.write_bytes(compiled.serialize())
            os.replace(tmp, path)
            tmp_meta = meta.with_name(meta.name + tag)
            tmp_meta.write_text(f"{image_bytes}\n")
            os.replace(tmp_meta, meta)
            del compiled
            self.captures += 1
            # Map the file rather than keep the compiled copy: the image is then backed
            # by the page cache, shared with every other process using it.
            module = wasmtime.Module.deserialize_file(self.host.engine, str(path))
        memory_bytes = _initial_memory(module)
        template = self.host.template(module, recipe.define)
        # The snapshot keeps the guest's globals (their initial values changed).
        layout = parse_module(recipe.guest.read_bytes())
        mutable = tuple(g.valtype for g in layout.globals if g.mutable)
        return SnapshotModule(path, template, image_bytes, memory_bytes, mutable, key)


def _initial_memory(module: wasmtime.Module) -> int:
    for exp in module.exports:
        if isinstance(exp.type, wasmtime.MemoryType):
            return int(exp.type.limits.min) * 65536
    return 0


_caches: dict[int, SnapshotCache] = {}
_caches_lock = threading.Lock()


def snapshot_cache(host: WasmHost) -> SnapshotCache:
    """The host's snapshot cache (one per :class:`WasmHost`)."""
    with _caches_lock:
        cache = _caches.get(id(host))
        if cache is None or cache.host is not host:
            cache = _caches[id(host)] = SnapshotCache(host)
        return cache
