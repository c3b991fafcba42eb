"""``isolation: request`` (runtime.backends.wasm.request_pool) against pooled instances, with the
probe-engine guest (wasm-modules/probe-engine): state one call leaves is not seen by the
next, every instance keeps the sandbox's limits, and the options are validated."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.wasm.build import build_guest
from runtime.backends.wasm.engine.reactor import ComputeOptions, EngineInstance, EnginePool
from runtime.backends.wasm.engine.snapshot import ENGINE_INIT_EXPORTS, engine_recipe
from runtime.backends.wasm.host import Sandbox, WasmHost
from runtime.backends.wasm.request_pool import RequestPool
from runtime.backends.wasm.reset import page_scan
from runtime.backends.wasm.snapshot import SnapshotCache, SnapshotModule
from runtime.errors import ConfigError, DeadlineExceeded, GuestOutOfMemory, GuestTrap
from runtime.settings import Settings

STATE, LOOP, MEMBOMB, TRAP, WRITE = range(5)


@pytest.fixture(scope="module")
def probe_engine(settings: Settings) -> Path:
    return build_guest("probe-engine", settings)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe-package")
    (folder / "weights.bin").write_bytes(os.urandom(20000))
    return folder


@pytest.fixture(scope="module")
def sandbox(package: Path) -> Sandbox:
    return Sandbox(
        env={"EI_WEIGHTS": "/model/weights.bin"},
        mounts=[(package, "/model")],
        timeout_s=1.0,
        max_memory_bytes=64 << 20,
        program="probe-engine",
    )


@pytest.fixture(scope="module")
def snapshot(
    tmp_path_factory: pytest.TempPathFactory, probe_engine: Path, package: Path, sandbox: Sandbox
) -> SnapshotModule:
    host = WasmHost(Settings(state_dir=tmp_path_factory.mktemp("state")))
    recipe = engine_recipe(
        probe_engine,
        sandbox,
        [package / "weights.bin"],
        max_tokens=4,
        max_seq=0,
        load_timeout_s=10,
    )
    return SnapshotCache(host).get(recipe)


@pytest.fixture
def request_pool(snapshot: SnapshotModule, sandbox: Sandbox) -> Iterator[RequestPool]:
    pool = RequestPool(snapshot.template.host, snapshot, sandbox, size=2, max_tokens=4, max_seq=0)
    yield pool
    pool.close()


def _call(pool: RequestPool | EnginePool, mode: int, arg: int = 0) -> list[float]:
    out = pool.run(np.array([[mode, arg, 0, 0]], np.int32), 1, 0)
    return out[0].tolist()


def test_the_snapshot_carries_the_loaded_file_and_drops_the_init_exports(
    snapshot: SnapshotModule, request_pool: RequestPool, package: Path
) -> None:
    names = {e.name for e in snapshot.module.exports}
    assert not names & ENGINE_INIT_EXPORTS and "ei_run" in names
    _, _, total, held = _call(request_pool, STATE)
    assert total == sum((package / "weights.bin").read_bytes()) and held == 1


def test_a_request_never_sees_what_the_previous_one_left(request_pool: RequestPool) -> None:
    assert _call(request_pool, STATE, 11)[:2] == [1, 0]
    assert _call(request_pool, STATE, 22)[:2] == [1, 0]  # a fresh instance: no count, no arg
    assert request_pool.calls == 2


def test_a_pooled_instance_keeps_state_between_calls(
    snapshot: SnapshotModule, sandbox: Sandbox
) -> None:
    pool = EnginePool(
        snapshot.template.host, snapshot.template, sandbox, size=1, max_tokens=4, max_seq=0
    )
    try:
        assert _call(pool, STATE, 11)[:2] == [1, 0]
        assert _call(pool, STATE, 22)[:2] == [2, 11]  # the same instance remembers
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("mode", "error"),
    [(LOOP, DeadlineExceeded), (MEMBOMB, GuestOutOfMemory), (TRAP, GuestTrap)],
)
def test_each_request_instance_keeps_the_sandbox_limits(
    request_pool: RequestPool, mode: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _call(request_pool, mode)
    assert _call(request_pool, STATE, 5)[:2] == [1, 0]  # and the next request is served
    assert request_pool.settle()  # the reset after the answer is done
    assert request_pool.available() == request_pool.size


def test_the_model_folder_stays_read_only(request_pool: RequestPool, package: Path) -> None:
    assert _call(request_pool, WRITE)[0] == 0
    assert not (package / "written-by-probe").exists()


def test_a_snapshot_needs_its_memory_limit(snapshot: SnapshotModule, sandbox: Sandbox) -> None:
    from dataclasses import replace

    tight = replace(sandbox, max_memory_bytes=snapshot.memory_bytes - 65536)
    with pytest.raises(GuestOutOfMemory):
        RequestPool(snapshot.template.host, snapshot, tight, size=1, max_tokens=4, max_seq=0)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"isolation": "request", "snapshot": False}, "needs snapshot: true"),
        ({"isolation": "thread"}, "options.isolation"),
        ({"snapshot": "sometimes"}, "options.snapshot"),
    ],
)
def test_isolation_options_are_validated(options: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ComputeOptions.parse(options, "model 'x': edgeinfer-wasm.yaml")


def test_the_default_is_pooled_from_a_snapshot() -> None:
    options = ComputeOptions.parse({}, "model 'x'")
    assert options.isolation == "pooled" and options.snapshot is True
    assert ComputeOptions.parse({"isolation": "request"}, "x").isolation == "request"


@pytest.mark.parametrize(
    ("options", "parallel", "cores", "instances"),
    [
        ({}, 1, 3, 3),  # one per core the core budget gives the replica
        ({}, 4, 3, 4),  # the model's parallel
        ({"instances": 2}, 4, 3, 2),  # the package's own setting
    ],
)
def test_engine_instances_follow_the_core_budget(
    options: dict[str, object], parallel: int, cores: int, instances: int
) -> None:
    from runtime.backends.wasm.engine.reactor import default_instances

    assert default_instances(ComputeOptions.parse(options, "x"), parallel, cores) == instances


def _memory_bytes(inst: EngineInstance) -> bytes:
    return bytes(inst.memory.read(inst.store, 0, inst.memory.data_len(inst.store)))


def test_a_request_instance_is_reset_in_place_to_the_snapshot_byte_for_byte(
    request_pool: RequestPool, snapshot: SnapshotModule
) -> None:
    if not request_pool.resets_in_place:
        pytest.skip("PAGEMAP_SCAN is not supported here: a fresh instance per call instead")
    fresh = request_pool.instance()
    try:
        pristine = _memory_bytes(fresh)
    finally:
        fresh.close()
    for arg in (11, 22, 33):
        assert _call(request_pool, STATE, arg)[:2] == [1, 0]
        assert request_pool.settle()  # one instance suffices when calls come one by one
    # One instance served all three (no new instance made after the first), and what it
    # holds between calls is the snapshot's memory again, not what the calls wrote.
    assert request_pool.fresh == 1 and request_pool.resets == 3
    assert request_pool.reset_pages >= 3  # each call wrote at least its input page
    idle = request_pool._idle.get_nowait()  # the kept instance, looked at directly
    try:
        assert _memory_bytes(idle) == pristine
    finally:
        request_pool._idle.put(idle)


def test_an_instance_whose_call_trapped_is_dropped_not_reset(request_pool: RequestPool) -> None:
    assert _call(request_pool, STATE, 1)[:2] == [1, 0]
    assert request_pool.settle()
    made = request_pool.fresh
    with pytest.raises(GuestTrap):
        _call(request_pool, TRAP)
    assert request_pool.settle()
    assert _call(request_pool, STATE, 2)[:2] == [1, 0]
    assert request_pool.settle()
    assert request_pool.fresh == made + 1  # the trapped one went; a new one served
    assert request_pool.live <= request_pool.size


def test_without_the_page_scan_each_call_gets_a_fresh_instance(
    snapshot: SnapshotModule, sandbox: Sandbox
) -> None:
    pool = RequestPool(
        snapshot.template.host, snapshot, sandbox, size=1, max_tokens=4, max_seq=0, reset=False
    )
    try:
        assert not pool.resets_in_place
        assert _call(pool, STATE, 11)[:2] == [1, 0]
        assert _call(pool, STATE, 22)[:2] == [1, 0]
        assert pool.fresh == 2 and pool.live == 0 and pool.resets == 0
    finally:
        pool.close()


def test_a_released_pooled_model_parks_one_instance_in_the_snapshot_state(
    snapshot: SnapshotModule, sandbox: Sandbox
) -> None:
    scan = page_scan()
    if scan is None:
        pytest.skip("PAGEMAP_SCAN is not supported here: release drops every instance")
    pool = EnginePool(
        snapshot.template.host,
        snapshot.template,
        sandbox,
        size=2,
        max_tokens=4,
        max_seq=0,
        park=scan,
        park_memory_bytes=snapshot.memory_bytes,
    )
    try:
        pristine = _memory_bytes(pool._free.queue[0])  # the first instance, never called
        assert _call(pool, STATE, 11)[:2] == [1, 0]
        assert _call(pool, STATE, 22)[:2] == [2, 11]  # pooled: it remembers
        assert pool.release() == 1
        assert pool.live == 0 and pool.parked == 1
        parked = pool._free.queue[0]
        assert _memory_bytes(parked) == pristine  # what the calls wrote is gone
        assert _call(pool, STATE, 33)[:2] == [1, 0]  # the snapshot's state, not [3, 22]
        assert pool.live == 1 and pool.parked == 0
        assert pool._free.queue[0] is parked  # the parked instance served: none was made
    finally:
        pool.close()


def test_a_released_request_pool_parks_one_reset_instance(request_pool: RequestPool) -> None:
    if not request_pool.resets_in_place:
        pytest.skip("PAGEMAP_SCAN is not supported here: release drops every instance")
    assert _call(request_pool, STATE, 11)[:2] == [1, 0]
    assert request_pool.settle()
    assert request_pool.release() == 1
    assert request_pool.live == 0 and request_pool.parked == 1
    made = request_pool.fresh
    assert _call(request_pool, STATE, 22)[:2] == [1, 0]  # still the snapshot's state
    assert request_pool.settle()
    assert request_pool.fresh == made and request_pool.parked == 0  # the parked one served
