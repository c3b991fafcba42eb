"""Cold start from zero through ``edgeinfer serve``, per bundled model.

For each model and round: a fresh gateway (every model at zero replicas), one request,
and the time from sending it to the first byte of the answer (for the generative models
a stream, so the first byte is the first token). The phases of that cold start
(``spawn``, ``load``, ``warmup``) come from ``/admin/models``. A second, warm request
to the same replica gives the other side of the ratio. The page cache is warm (the
model files were read before), as for a model that sits on the machine's disk.
Prints one JSON line. Run: ``python bench/cold_start.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.scaling.replica import free_port  # noqa: E402

REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2": (
        "/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 8,
            "stream": True,
            "temperature": 0,
        },
    ),
    "gemma3-270m": (
        "/v1/completions",
        {
            "model": "gemma3-270m",
            "prompt": "The capital of France is",
            "max_tokens": 8,
            "stream": True,
            "temperature": 0,
        },
    ),
    "minilm": ("/v1/embeddings", {"model": "minilm", "input": "a cold start"}),
    "magika": (
        "/v2/models/magika/infer",
        {
            "inputs": [
                {
                    "name": "content",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["#!/bin/sh\necho hi\n"],
                }
            ]
        },
    ),
}


def first_byte(port: int, path: str, body: dict[str, Any]) -> float:
    """Seconds from sending the request to the first byte of the response body."""
    conn = HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read(1)
    elapsed = time.perf_counter() - start
    rest = response.read()
    if response.status != 200:
        raise SystemExit(f"{path} answered {response.status}: {rest[:300]!r}")
    conn.close()
    return elapsed


def one_round(model: str) -> dict[str, Any]:
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "EDGEINFER_MEASURE_MISSING": "0"},  # nothing measured beside it
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gateway did not start") from None
                time.sleep(0.05)
        path, body = REQUESTS[model]
        cold = first_byte(port, path, body)
        warm = statistics.median(first_byte(port, path, body) for _ in range(5))
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/admin/models")
        admin = {m["model"]: m for m in json.loads(conn.getresponse().read())["models"]}
        phases = admin[model]["last_cold_start"]["phases"]
        return {"cold": cold, "warm": warm, "phases": phases}
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(REQUESTS))
    args = parser.parse_args()
    out: dict[str, Any] = {}
    for model in args.models:
        rounds = [one_round(model) for _ in range(args.rounds)]
        cold = statistics.median(r["cold"] for r in rounds)
        out[model] = {
            "cold_first_byte_ms": round(cold * 1000, 1),
            "warm_first_byte_ms": round(statistics.median(r["warm"] for r in rounds) * 1000, 1),
            "phases_ms": {
                phase: round(statistics.median(r["phases"][phase] for r in rounds) * 1000, 1)
                for phase in ("spawn", "load", "warmup")
            },
            "rounds_ms": [round(r["cold"] * 1000, 1) for r in rounds],
        }
    smollm2 = out.get("smollm2", {}).get("cold_first_byte_ms")
    print(
        json.dumps(
            {
                "bench": "cold_start",
                "rounds": args.rounds,
                "models": out,
                "target_smollm2_first_token_ms": 1000,
                "pass": smollm2 is not None and smollm2 <= 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
