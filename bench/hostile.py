"""Hostile inputs against ``edgeinfer serve``, with uvicorn (``http="h11"``) as reference.

For each attack of ``tests/gateway/attacks.py`` (issue 12), against the gateway on its
own server and against the same gateway app served by uvicorn with h11, both started
here with the same config (models served by a fake replica on loopback): the outcome
(status / closed / timeout), the gateway process's RSS before, at its peak during, and
after the attack, and the latency of normal requests (an authenticated OIP infer, one
client, back to back) sent DURING the attack: p50/p99 and how many failed. An attack
that ends within 2 s is repeated until 2 s have passed (``repeats``).

Everything shares this machine's cores. Prints one JSON line.
Run from the repository root (it imports the test suite's attacks):
``PYTHONPATH=. python bench/hostile.py [--only NAME ...] [--servers ours uvicorn-h11]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.attacks import ATTACKS, FakeReplica, Target, replica_models
from tests.gateway.served import ADMIN_KEY, API_KEY, ServedGateway, start_gateway

MIN_SECONDS = 2.0
# Bigger than the CI suite's: the bench shows costs, the tests show behaviour.
_ARGS: dict[str, dict[str, Any]] = {
    "5000_made_up_models_then_metrics": {"count": 5000, "wait": 10.0},
    "401_flood": {"count": 2000},
    "endless_header_value": {"size": 64 << 20, "wait": 10.0},
}


class Probe(threading.Thread):
    """Normal requests back to back while an attack runs; samples the RSS too."""

    def __init__(self, gw: ServedGateway) -> None:
        super().__init__(daemon=True)
        self.gw = gw
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self.peak_rss = gw.rss_bytes()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self.gw.url, headers=headers, timeout=10) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.post("/v2/models/echo/infer", json={"inputs": []}).status_code
                    if ok != 200:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                self.latencies.append(time.perf_counter() - start)
                if self.gw.alive():
                    self.peak_rss = max(self.peak_rss, self.gw.rss_bytes())
                time.sleep(0.01)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def attack(gw: ServedGateway, name: str) -> dict[str, Any]:
    target = Target(gw.port, API_KEY, ADMIN_KEY)
    before = gw.rss_bytes()
    probe = Probe(gw)
    probe.start()
    started = time.perf_counter()
    repeats = 0
    # A quick attack is repeated for MIN_SECONDS so normal requests overlap it; the
    # outcome is the first run's.
    while repeats == 0 or time.perf_counter() - started < MIN_SECONDS:
        try:
            out = ATTACKS[name](target, **_ARGS.get(name, {}))
            label, more = out.label(), out.extra
        except OSError as exc:
            label, more = f"error: {exc!r}", {}
        if repeats == 0:
            outcome, extra = label, more
        repeats += 1
        if not gw.alive():
            break
    seconds = time.perf_counter() - started
    probe.stop.set()
    probe.join(15)
    alive = gw.alive()
    return {
        "outcome": outcome,
        **({"extra": extra} if extra else {}),
        "seconds": round(seconds, 2),
        "repeats": repeats,
        "rss_mib_before": round(before / 2**20, 1),
        "rss_mib_peak": round(probe.peak_rss / 2**20, 1),
        "rss_mib_after": round(gw.rss_bytes() / 2**20, 1) if alive else None,
        "alive_after": alive,
        "normal_p50_ms": _pct(probe.latencies, 0.5),
        "normal_p99_ms": _pct(probe.latencies, 0.99),
        "normal_requests": len(probe.latencies),
        "normal_failures": probe.failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), default=None)
    parser.add_argument("--servers", nargs="*", default=["ours", "uvicorn-h11"])
    args = parser.parse_args()
    names = args.only or list(ATTACKS)
    replica = FakeReplica().start()
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for server in args.servers:
            # A fresh gateway per attack: one attack's leftovers never cost the next.
            for name in names:
                gw = start_gateway(Path(tmp), replica_models(replica), server=server)
                try:
                    results[name][server] = attack(gw, name)
                    print(server, name, results[name][server], file=sys.stderr, flush=True)
                finally:
                    gw.stop()
    replica.stop()
    print(json.dumps({"bench": "hostile", "attacks": results}))


if __name__ == "__main__":
    main()
