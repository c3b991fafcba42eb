"""Edge density: many models on one small box behind one ``edgeinfer serve``.

**WASM side**: ``--models`` tenants (``t000``, ``t001``...: even ones over the
``minilm-engine`` package, odd ones over ``magika-engine``; the weights are the same
files, so every tenant of a package shares one snapshot mapping) served by the one WASM
host. Each starts with one replica (``initial-scale: 1``: loaded into the host), then
goes to zero after a 6 s window; once all are at zero (resident, no instances) the
traffic starts: requests at a fixed rate (``--rps``, open loop: each sent at its time
whatever the others do) for ``--seconds``, the model of each drawn from a Zipf law
(exponent ``--zipf``) over the tenants, so a few are hot and most are called rarely and
scale from zero. Reported: first-byte p50/p99/max, failures (non-200 or an error),
peak memory of the gateway's whole process tree (sampled every second) as RSS and as
PSS (RSS counts a shared file page once per mapping: every copy-on-write instance of a
snapshot counts the weights again; PSS divides each page among its users, so it is
what the tree holds, and what the target is checked on), the loading phase.

**Native side**, the same trace against one worker process per model (onnxruntime,
Magika tenants only: the bundled native MiniLM builds a 90 MB ONNX file per model
name), each at zero until called: it reports where it runs out: the run stops when
the process tree's RSS passes ``--native-rss-limit-mib`` (the box's memory, kept small
here because the machine is shared) or the trace ends.

Targets (issue 14), WASM: p99 <= 50 ms at 20 requests/s, RSS <= 1.5 GiB, 0 failures.
Prints one JSON line. Run: ``python bench/edge_density.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.wasm_serve import (  # noqa: E402
    Served,
    engine_model,
    native_models,
    request_for,
    tree_cpu_seconds,
)

SCALING = {
    "min-scale": 0,
    "max-scale": 1,
    "window": "6s",
    "scale-to-zero-pod-retention-period": "0s",
    "timeout": "30s",
}
GATEWAY = {"tick_seconds": 0.25, "scale_to_zero_grace_seconds": 0, "max_queue": 1000}


def zipf_trace(n_models: int, rps: float, seconds: float, s: float, seed: int) -> list[int]:
    """Model index of each request, in order (``rps * seconds`` of them)."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** s for k in range(n_models)]
    order = list(range(n_models))
    rng.shuffle(order)  # which tenant is hot does not follow its name
    picks = rng.choices(range(n_models), weights=weights, k=int(rps * seconds))
    return [order[p] for p in picks]


def drive(
    served: Served,
    models: list[dict[str, Any]],
    trace: list[int],
    rps: float,
    stop_rss: int | None = None,
) -> dict[str, Any]:
    """Send the trace open loop; first bytes, failures and the peak RSS of the tree."""
    latencies: list[float] = []
    failures: list[str] = []
    peak = {"rss": 0, "pss": 0, "processes": 0}
    loads: list[float] = []  # the machine's 1-minute load average, sampled each second
    done = threading.Event()
    ran_out: dict[str, Any] = {}
    lock = threading.Lock()

    def sample() -> None:
        start = time.monotonic()
        while not done.is_set():
            tree = served.tree_rss_bytes()
            total = sum(tree.values())
            peak["rss"] = max(peak["rss"], total)
            peak["pss"] = max(peak["pss"], sum(served.tree_pss_bytes().values()))
            peak["processes"] = max(peak["processes"], len(tree))
            loads.append(os.getloadavg()[0])
            if stop_rss is not None and total > stop_rss and not ran_out:
                ran_out.update({"after_s": round(time.monotonic() - start, 1), "rss_bytes": total})
                done.set()
            done.wait(1.0)

    def one(index: int) -> None:
        path, body = request_for(models[index])
        try:
            seconds, status = served.first_byte(path, body)
        except Exception as exc:  # counted, not raised: the run goes on
            with lock:
                failures.append(f"{models[index]['name']}: {type(exc).__name__}: {exc}")
            return
        with lock:
            if status == 200:
                latencies.append(seconds)
            else:
                failures.append(f"{models[index]['name']}: HTTP {status}")

    sampler = threading.Thread(target=sample, daemon=True)
    cpu_before = tree_cpu_seconds(served.proc.pid)
    sampler.start()
    sent = 0
    with ThreadPoolExecutor(max_workers=128) as pool:
        t0 = time.perf_counter()
        for i, index in enumerate(trace):
            if done.is_set():
                break
            delay = t0 + i / rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, index)
            sent += 1
    done.set()
    sampler.join()
    cpu = tree_cpu_seconds(served.proc.pid) - cpu_before
    ms = sorted(x * 1000 for x in latencies)

    def q(p: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2) if ms else None

    return {
        "sent": sent,
        "ok": len(ms),
        "failures": len(failures),
        "failure_examples": failures[:5],
        "first_byte_ms": {
            "p50": round(statistics.median(ms), 2) if ms else None,
            "p99": q(0.99),
            "max": round(ms[-1], 2) if ms else None,
        },
        "peak_rss_mib": round(peak["rss"] / 2**20, 1),
        "peak_pss_mib": round(peak["pss"] / 2**20, 1),
        "peak_processes": peak["processes"],
        # CPU the gateway and everything under it spent per request sent (the trace's
        # requests still in flight when it ends are counted in, so a slight overestimate)
        "cpu_ms_per_request": round(cpu * 1000 / max(1, sent), 1),
        "load_average_1m": {
            "mean": round(statistics.mean(loads), 1) if loads else None,
            "max": round(max(loads), 1) if loads else None,
        },
        "ran_out": ran_out or None,
    }


def wasm_side(args: argparse.Namespace, trace: list[int]) -> dict[str, Any]:
    scaling = {**SCALING, "initial-scale": 1}
    models = [
        engine_model(f"t{i:03d}", "minilm-engine" if i % 2 == 0 else "magika-engine", scaling)
        for i in range(args.models)
    ]
    t0 = time.monotonic()
    served = Served(models, GATEWAY)
    try:
        names = [m["name"] for m in models]
        deadline = time.monotonic() + 900
        while True:  # every tenant loaded into the host once
            admin = served.admin()
            if all(admin[n]["cold_starts"] >= 1 for n in names):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the tenants did not all load in 900 s")
            time.sleep(0.5)
        loaded_s = time.monotonic() - t0
        served.wait_zero(names, limit=120)
        at_zero_rss = sum(served.tree_rss_bytes().values())
        at_zero_pss = sum(served.tree_pss_bytes().values())
        result = drive(served, models, trace, args.rps)
        admin = served.admin()
        result["cold_starts_during_run"] = sum(admin[n]["cold_starts"] for n in names) - len(names)
    finally:
        served.stop()
    result["load_all_s"] = round(loaded_s, 1)
    result["rss_all_at_zero_mib"] = round(at_zero_rss / 2**20, 1)
    result["pss_all_at_zero_mib"] = round(at_zero_pss / 2**20, 1)
    return result


def native_side(args: argparse.Namespace, trace: list[int]) -> dict[str, Any]:
    magika = next(m for m in native_models(SCALING) if m["name"] == "magika")
    models = []
    for i in range(args.models):
        m = json.loads(json.dumps(magika))
        m["name"] = f"t{i:03d}"
        m["scaling"] = {**SCALING, "initial-scale": 0}
        models.append(m)
    served = Served(models, {**GATEWAY, "wasm_host": {"enabled": False}})
    try:
        return drive(served, models, trace, args.rps, stop_rss=args.native_rss_limit_mib << 20)
    finally:
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--native-rss-limit-mib", type=int, default=4096)
    parser.add_argument("--skip-native", action="store_true")
    args = parser.parse_args()
    trace = zipf_trace(args.models, args.rps, args.seconds, args.zipf, args.seed)
    wasm = wasm_side(args, trace)
    native = None if args.skip_native else native_side(args, trace)
    p99 = wasm["first_byte_ms"]["p99"]
    print(
        json.dumps(
            {
                "bench": "edge_density",
                "models": args.models,
                "rps": args.rps,
                "seconds": args.seconds,
                "zipf": args.zipf,
                "distinct_models_called": len(set(trace)),
                "wasm": wasm,
                "native": native,
                "targets": {"p99_ms": 50, "pss_mib": 1536, "failures": 0},
                "load_average_1m_after": round(os.getloadavg()[0], 2),
                "pass": p99 is not None
                and p99 <= 50
                and wasm["peak_pss_mib"] <= 1536
                and wasm["failures"] == 0,
            }
        )
    )


if __name__ == "__main__":
    main()
