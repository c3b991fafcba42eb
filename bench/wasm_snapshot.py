"""Snapshots of the engine guest, mapped copy-on-write, against the plain module.

For ``minilm-engine`` and ``magika-engine`` (loaded as the ``wasm`` runtime loads them,
so the snapshot is the one it serves from), in one process:

* instantiate: a new engine instance from the snapshot (store, WASI, limits, the
  copy-on-write mapping) against one from the plain module that then runs
  ``_initialize`` + ``ei_init`` (reads and packs the weights); also the bare wasmtime
  ``InstancePre.instantiate`` of the snapshot in a ready store;
* memory: proportional set size (PSS, /proc/self/smaps_rollup, which counts a page
  shared by several mappings once) and RSS added by N=1 and by N=50 live snapshot
  instances, each having served one call (so each touched the weights), with no other
  instance mapping the image (so N=1 pays for the image's pages, N=50 shares them);
  beside it what each instance from the plain module adds (N=3, each its own weights);
* isolation: the per-call cost of ``isolation: request`` over a pooled warm instance,
  the same input, calls alternating, medians compared: as served (an instance reset in
  place to the snapshot after each call, ``runtime.backends.wasm.reset``, the reset
  running after the answer is handed back, so a call's latency includes it only when
  the next call comes before it is done; its time is also measured inside the pool:
  the CPU each call costs, without the noise of two medians) and, as before, a fresh
  instance per call; with the page faults per call that explain them.

Run: ``python bench/wasm_snapshot.py [--calls 40] [--instances 50]``. Prints one JSON
line. Figures from a shared machine carry its noise; the ratios compare sides measured
in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.backends.registry import Runtime, create_runtime  # noqa: E402
from runtime.backends.wasm.abi.compute import ComputeGuest  # noqa: E402
from runtime.backends.wasm.engine.reactor import EngineInstance, EngineLayout, EnginePool  # noqa: E402
from runtime.backends.wasm.host import Template, WasmHost, _wasi_config  # noqa: E402
from runtime.backends.wasm.request_pool import RequestPool  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.model import load_config  # noqa: E402

MODELS = ROOT / "wasm-modules" / "packages" / "models.yaml"
MIB = 1 << 20


def memory() -> dict[str, float]:
    """Rss, Pss and Private_Dirty of this process, MiB."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Private_Dirty"):
            out[key.lower()] = int(rest.split()[0]) / 1024
    return out


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load(name: str, settings: Settings) -> Runtime:
    config = load_config(MODELS)
    spec = config.get(name)
    assert spec is not None
    rt = create_runtime(spec, runtime="wasm", settings=settings, base_dir=config.base_dir)
    asyncio.run(rt.load())
    return rt


def payload_for(name: str, pool: EnginePool) -> tuple[np.ndarray, int, int]:
    if name.startswith("minilm"):
        ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 6251, 102]])  # a short sentence
        stacked = np.stack([ids, np.zeros_like(ids), np.ones_like(ids)]).astype(np.int32)
        return stacked, 1, ids.shape[1]
    rng = np.random.default_rng(0)
    return rng.integers(0, 257, size=(1, pool.input_width)).astype(np.int32), 1, 0


def bench_model(name: str, settings: Settings, calls: int, count: int) -> dict[str, object]:
    t0 = time.perf_counter()
    rt = load(name, settings)
    load_s = time.perf_counter() - t0
    guest = rt._ready()  # type: ignore[attr-defined]
    assert isinstance(guest, ComputeGuest) and isinstance(guest.pool, EnginePool)
    pool = guest.pool
    host: WasmHost = guest.host
    sandbox = pool.sandbox
    snap = guest.snapshot
    assert snap is not None and snap.template is pool.template

    def make(template: Template, layout: EngineLayout | None = None) -> EngineInstance:
        return EngineInstance(
            host,
            template,
            sandbox,
            max_tokens=pool.max_tokens,
            max_seq=pool.max_seq,
            layout=layout,
        )

    probe = make(snap.template)
    layout = probe.layout
    probe.close()
    payload, batch, seq = payload_for(name, pool)

    # -- instantiate -------------------------------------------------------------------
    def from_snapshot() -> EngineInstance:
        return make(snap.template, layout)

    snap_times = []
    for _ in range(200):
        t = time.perf_counter()
        from_snapshot().close()
        snap_times.append(time.perf_counter() - t)
    bare = []
    for _ in range(200):
        store = wasmtime.Store(host.engine)
        store.set_wasi(_wasi_config(sandbox))
        store.set_limits(memory_size=sandbox.max_memory_bytes)
        store.set_epoch_deadline(1 << 30)
        t = time.perf_counter()
        snap.template.pre.instantiate(store)
        bare.append(time.perf_counter() - t)
        store.close()
    plain_template = host.template(host.module(guest.package.guest_path))
    plain_times = []
    for _ in range(3):
        t = time.perf_counter()
        make(plain_template).close()
        plain_times.append(time.perf_counter() - t)

    # -- isolation: request against pooled -----------------------------------------------
    request = RequestPool(
        host, snap, sandbox, size=1, max_tokens=pool.max_tokens, max_seq=pool.max_seq
    )
    fresh = RequestPool(
        host, snap, sandbox, size=1, max_tokens=pool.max_tokens, max_seq=pool.max_seq, reset=False
    )
    for _ in range(3):
        pool.run(payload, batch, seq)
        request.run(payload, batch, seq)
        fresh.run(payload, batch, seq)
    pooled_t, request_t, request_faults, fresh_t = [], [], [], []
    for _ in range(calls):
        t = time.perf_counter()
        fresh.run(payload, batch, seq)
        fresh_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        pool.run(payload, batch, seq)
        pooled_t.append(time.perf_counter() - t)
        f = faults()
        t = time.perf_counter()
        request.run(payload, batch, seq)
        request_t.append(time.perf_counter() - t)
        request_faults.append(faults() - f)
    request.settle()
    request.close()
    fresh.close()
    asyncio.run(rt.unload())

    # -- memory of live instances (the runtime's own pooled instances closed first, so
    # the image's pages are counted once, in N=1 as in N=50) ---------------------------
    gc.collect()
    base = memory()
    live = [from_snapshot()]
    live[0].run(payload, batch, seq)
    one = memory()
    for _ in range(count - 1):
        inst = from_snapshot()
        inst.run(payload, batch, seq)
        live.append(inst)
    many = memory()
    for inst in live:
        inst.close()
    live.clear()
    gc.collect()
    base_plain = memory()
    plain_live = []
    for _ in range(3):
        inst = make(plain_template)
        inst.run(payload, batch, seq)
        plain_live.append(inst)
    plain_mem = memory()
    for inst in plain_live:
        inst.close()
    plain_live.clear()

    med = statistics.median
    return {
        "load_s": round(load_s, 3),
        "image_mib": round(snap.image_bytes / MIB, 1),
        "memory_mib": round(snap.memory_bytes / MIB, 1),
        "instantiate_ms": {
            "snapshot_instance": round(med(snap_times) * 1e3, 3),
            "snapshot_wasmtime_only": round(med(bare) * 1e3, 4),
            "plain_module_and_init": round(med(plain_times) * 1e3, 1),
        },
        "instantiate_speedup": round(med(plain_times) / med(snap_times), 1),
        "live_instances_mib": {
            "pss_n1": round(one["pss"] - base["pss"], 1),
            f"pss_n{count}": round(many["pss"] - base["pss"], 1),
            "rss_n1": round(one["rss"] - base["rss"], 1),
            f"rss_n{count}": round(many["rss"] - base["rss"], 1),
            f"private_dirty_n{count}": round(many["private_dirty"] - base["private_dirty"], 1),
            "pss_per_plain_instance": round((plain_mem["pss"] - base_plain["pss"]) / 3, 1),
        },
        f"pss_ratio_n{count}_vs_n1": round(
            (many["pss"] - base["pss"]) / max(one["pss"] - base["pss"], 0.1), 2
        ),
        "call_ms": {
            "pooled": round(med(pooled_t) * 1e3, 3),
            "request": round(med(request_t) * 1e3, 3),
            "request_fresh_instance": round(med(fresh_t) * 1e3, 3),
        },
        "fresh_instance_cost_ms": round((med(fresh_t) - med(pooled_t)) * 1e3, 3),
        "request_isolation_cost_ms": round((med(request_t) - med(pooled_t)) * 1e3, 3),
        "request_faults_per_call": int(med(request_faults)),
        "request_resets_in_place": request.resets_in_place,
        # The reset's own time, measured inside the pool: the cost without the noise of
        # two call medians (a loaded machine moves those by milliseconds).
        "request_reset_ms_per_call": round(request.reset_seconds * 1e3 / max(request.resets, 1), 3),
        "request_reset_pages_per_call": round(request.reset_pages / max(request.resets, 1), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    settings = Settings.from_env()
    result: dict[str, object] = {"bench": "wasm_snapshot"}
    for name in ("minilm-engine", "magika-engine"):
        result[name] = bench_model(name, settings, args.calls, args.instances)
    result["target_request_isolation_cost_ms"] = 0.2
    result["calls"] = args.calls
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
