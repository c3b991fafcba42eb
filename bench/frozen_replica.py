"""How long a frozen replica stays in rotation (issue 19's target: at most 5 s).

``edgeinfer serve`` with the bundled MiniLM; each round warms a replica with one
request, freezes its worker (SIGSTOP), and polls ``/admin/models`` (every 20 ms) until
the replica is no longer listed: the seconds from the SIGSTOP to then, and to the first
request answered 200 by its replacement (a cold start included). The default health
settings (probe every 1 s, 1 s timeout, 3 misses) bound the first at about 4 s plus the
poll. Everything shares this machine's cores. Prints one JSON line. Run from the
repository root: ``PYTHONPATH=. python bench/frozen_replica.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.gateway.served import ADMIN_KEY, API_KEY, bundled_models, start_gateway

USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _pids(url: str) -> list[int]:
    models = httpx.get(f"{url}/admin/models", headers=ADMIN, timeout=10).json()["models"]
    return [i["pid"] for m in models for i in m["instances"] if i["state"] == "ready"]


def _embed(url: str) -> int:
    body = {"model": "minilm", "input": "hello"}
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=USER, timeout=120).status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out_of_rotation: list[float] = []
    served_again: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp), bundled_models("minilm"))
        try:
            for _ in range(args.rounds):
                assert _embed(gw.url) == 200
                [pid] = _pids(gw.url)
                frozen = time.monotonic()
                os.kill(pid, signal.SIGSTOP)
                try:
                    while pid in _pids(gw.url):
                        time.sleep(0.02)
                    out_of_rotation.append(time.monotonic() - frozen)
                    status = _embed(gw.url)
                    served_again.append(time.monotonic() - frozen)
                    assert status == 200, status
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            gw.stop()
    print(
        json.dumps(
            {
                "bench": "frozen_replica",
                "rounds": args.rounds,
                "out_of_rotation_s": [round(s, 2) for s in out_of_rotation],
                "out_of_rotation_median_s": round(statistics.median(out_of_rotation), 2),
                "replacement_served_s": [round(s, 2) for s in served_again],
                "target_s": 5.0,
                "load_average": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
