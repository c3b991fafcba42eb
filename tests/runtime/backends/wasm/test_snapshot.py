"""runtime.backends.wasm.snapshot and runtime.backends.wasm.wasm_binary: capturing an
initialised guest as a module, the module rewrite's refusals, the copy-on-write densifying,
the disk cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from runtime.backends.wasm import snapshot as snapshot_module
from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.backends.wasm.snapshot import (
    COW_ALWAYS,
    SnapshotCache,
    SnapshotRecipe,
    cow_dense,
    file_digest,
    nonzero_segments,
)
from runtime.backends.wasm.wasm_binary import (
    DataSegment,
    parse_module,
    read_sleb,
    read_uleb,
    sleb,
    uleb,
)
from runtime.errors import SnapshotUnsupported
from runtime.settings import Settings

COUNTER_WAT = """
(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (global $h (mut i64) (i64.const 0))
  (global $f (mut f64) (f64.const 0))
  (global $k i32 (i32.const 5))
  (data (i32.const 16) "hello")
  (func (export "init")
    (global.set $g (i32.const -7))
    (global.set $h (i64.const 1234567890123))
    (global.set $f (f64.const 2.5))
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 140000) (i32.const 42))
    (i32.store8 (i32.const 16) (i32.const 72)))
  (func (export "g") (result i32) global.get $g)
  (func (export "h") (result i64) global.get $h)
  (func (export "f") (result f64) global.get $f)
  (func (export "k") (result i32) global.get $k)
  (func (export "bump") (result i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    global.get $g))
"""


def _write_wat(tmp_path: Path, wat: str, name: str = "guest.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def _call_init(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    init = instance.exports(store)["init"]
    assert isinstance(init, wasmtime.Func)
    init(store)


def _recipe(guest: Path, inputs: tuple[Path, ...] = ()) -> SnapshotRecipe:
    return SnapshotRecipe(
        guest=guest,
        sandbox=Sandbox(timeout_s=5),
        init=_call_init,
        init_key="init()",
        inputs=inputs,
        drop_exports=frozenset({"init"}),
        name="counter",
    )


def _instance(host: WasmHost, template_pre: wasmtime.InstancePre) -> tuple[wasmtime.Store, dict]:  # type: ignore[type-arg]
    store = wasmtime.Store(host.engine)
    store.set_epoch_deadline(1 << 30)
    store.set_wasi(wasmtime.WasiConfig())
    exports = template_pre.instantiate(store).exports(store)
    return store, dict(exports.items())


@pytest.mark.parametrize(
    "value", [0, 1, 63, 64, 127, 128, 300, -1, -64, -65, 2**31 - 1, -(2**31), 2**40]
)
def test_leb128_round_trips(value: int) -> None:
    assert read_sleb(sleb(value), 0) == (value, len(sleb(value)))
    if value >= 0:
        assert read_uleb(uleb(value), 0) == (value, len(uleb(value)))


def test_a_snapshot_starts_where_the_initialisation_left_off(tmp_path: Path) -> None:
    host = WasmHost(Settings(state_dir=tmp_path / "state"))
    snap = SnapshotCache(host).get(_recipe(_write_wat(tmp_path, COUNTER_WAT)))
    names = {e.name for e in snap.module.exports}
    assert "init" not in names and {"g", "memory", "bump"} <= names
    assert not any(n.startswith("__edgeinfer") for n in names)  # the capture's own exports
    assert snap.memory_bytes == 3 * 65536  # grown by init: the snapshot starts that big
    store, ex = _instance(host, snap.template.pre)
    assert ex["g"](store) == -7 and ex["h"](store) == 1234567890123 and ex["f"](store) == 2.5
    assert ex["k"](store) == 5
    memory = ex["memory"]
    assert bytes(memory.read(store, 16, 21)) == b"Hello"
    assert int.from_bytes(memory.read(store, 140000, 140004), "little") == 42
    assert ex["bump"](store) == -6
    # The plain module, for contrast, starts from its own initial values.
    plain = host.template(wasmtime.Module(host.engine, wasmtime.wat2wasm(COUNTER_WAT)))
    store2, ex2 = _instance(host, plain.pre)
    assert ex2["g"](store2) == 0 and bytes(ex2["memory"].read(store2, 16, 21)) == b"hello"


@pytest.mark.parametrize(
    ("wat", "words"),
    [
        ('(module (memory 1) (data "x") (func (export "init")))', "passive data"),
        ('(module (import "env" "m" (memory 1)) (func (export "init")))', "imports its memory"),
        ('(module (func (export "init")))', "no memory"),
        (
            '(module (memory 1) (global (mut funcref) (ref.null func)) (func (export "init")))',
            "mutable global",
        ),
        (
            '(module (import "env" "g" (global (mut i32))) (memory 1) (func (export "init")))',
            "mutable global",
        ),
    ],
)
def test_what_cannot_be_snapshotted_is_refused_by_name(
    tmp_path: Path, wat: str, words: str
) -> None:
    host = WasmHost(Settings(state_dir=tmp_path / "state"))
    with pytest.raises(SnapshotUnsupported, match=words):
        SnapshotCache(host).get(_recipe(_write_wat(tmp_path, wat)))


def test_not_webassembly_is_refused() -> None:
    with pytest.raises(SnapshotUnsupported, match="magic"):
        parse_module(b"\x7fELF\x02\x01\x01\x00")


def test_nonzero_segments_cover_exactly_the_nonzero_blocks() -> None:
    image = np.zeros(16 * 4096, np.uint8)
    image[5] = 1  # block 0
    image[4096 * 3 + 100] = 2  # block 3 ...
    image[4096 * 4 + 4095] = 3  # ... and 4: one segment
    image[4096 * 15] = 4  # block 15, the last
    segs = nonzero_segments(image)
    expected = [(0, 4096), (3 * 4096, 8192), (15 * 4096, 4096)]
    assert [(s.offset, len(s.data)) for s in segs] == expected
    rebuilt = np.zeros_like(image)
    for s in segs:
        rebuilt[s.offset : s.offset + len(s.data)] = np.frombuffer(s.data, np.uint8)
    assert np.array_equal(rebuilt, image)
    assert nonzero_segments(np.zeros(8192, np.uint8)) == []


def test_cow_dense_fills_the_smallest_gaps_until_wasmtime_builds_an_image() -> None:
    mib = 1 << 20
    image = np.zeros(64 * mib, np.uint8)
    # data 1 MiB at 0, 1 MiB at 2 MiB (gap 1 MiB), 10 MiB at 40 MiB (gap 37 MiB),
    # 1 MiB at 60 MiB (gap 10 MiB): 13 MiB of data over a 61 MiB span: too sparse.
    layout = [(0, 1), (2, 1), (40, 10), (60, 1)]
    for at, size in layout:
        image[at * mib : (at + size) * mib] = 7
    segs = [DataSegment(at * mib, bytes(image[at * mib : (at + n) * mib])) for at, n in layout]
    dense = cow_dense(segs, image)
    span = dense[-1].offset + len(dense[-1].data) - dense[0].offset
    data = sum(len(s.data) for s in dense)
    assert span == 61 * mib and span < 2 * data  # wasmtime's condition holds now
    # The 1 MiB and 10 MiB gaps were filled first, the 37 MiB one was also needed.
    assert [(s.offset // mib, len(s.data) // mib) for s in dense] == [(0, 61)]
    assert dense[0].data == bytes(image[: 61 * mib])
    # Already dense, or under wasmtime's always-allowed size: left alone.
    small = [DataSegment(0, b"x"), DataSegment(COW_ALWAYS // 2, b"y")]
    assert cow_dense(small, np.zeros(COW_ALWAYS, np.uint8)) == small


def test_the_cache_maps_a_snapshot_from_disk_and_keys_on_its_inputs(tmp_path: Path) -> None:
    guest = _write_wat(tmp_path, COUNTER_WAT)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"one")
    state = Settings(state_dir=tmp_path / "state")
    first = SnapshotCache(WasmHost(state))
    snap = first.get(_recipe(guest, (weights,)))
    assert first.get(_recipe(guest, (weights,))) is snap and first.captures == 1
    assert snap.path.is_file() and snap.path.parent == tmp_path / "state" / "wasm" / "snapshots"

    assert first.forget(_recipe(guest, (weights,))) and not first.forget(_recipe(guest))
    assert first.get(_recipe(guest, (weights,))) is not snap and first.captures == 1  # mapped

    again = SnapshotCache(WasmHost(state))  # as a new process would
    snap2 = again.get(_recipe(guest, (weights,)))
    assert again.captures == 0 and snap2.path == snap.path

    weights.write_bytes(b"two")  # other weights: another snapshot
    snap3 = again.get(_recipe(guest, (weights,)))
    assert again.captures == 1 and snap3.path != snap.path

    # A damaged cache file is captured again. (Replaced, not rewritten in place: the
    # live modules above map it, and truncating a mapped file is a SIGBUS.)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"truncated")
    os.replace(damaged, snap.path)
    fresh = SnapshotCache(WasmHost(state))
    weights.write_bytes(b"one")
    assert fresh.get(_recipe(guest, (weights,))).path == snap.path and fresh.captures == 1


def test_file_digests_are_remembered_until_the_file_changes(tmp_path: Path) -> None:
    weights, memo = tmp_path / "weights.bin", tmp_path / "digests"
    weights.write_bytes(b"a" * 1000)
    first = file_digest(weights, memo)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    (entry,) = memo.iterdir()
    entry.write_text("f" * 64 + "\n")  # what a new process finds on disk ...
    snapshot_module._digests.clear()
    assert file_digest(weights, memo) == "f" * 64  # ... it trusts, without reading
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"b" * 1000)
    os.replace(replacement, weights)  # another inode: hashed again
    assert file_digest(weights, memo) == hashlib.sha256(b"b" * 1000).hexdigest()
