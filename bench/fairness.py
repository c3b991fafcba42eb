"""Traffic control under load (issue 18): priority shedding and fair shares, through
``edgeinfer serve`` with real MiniLM workers (onnxruntime), one replica each.

(a) **Shedding.** An interactive client (a standard key) sends at 20 % of the model's
    capacity, open loop, first alone (unloaded), then beside a batch client (a key
    whose class is ``sheddable``) sending at 10x the capacity. Targets: the
    interactive p99 loaded <= 1.5x its p99 unloaded, measured in the same run, and 0
    interactive errors. The model takes ``--slots`` requests at once
    (container-concurrency) and sheddable requests leave ``--headroom`` of them free
    (``gateway.traffic.sheddable_headroom``). Capacity = slots / the median unloaded
    latency of back-to-back requests.
(b) **Fair shares.** Two standard tenants, closed loop at 5:1 demand (10 and 2
    requests outstanding) on one slot, both backlogged the whole time: the share each
    is served. Target: within 10 % of equal shares (0.45-0.55). The same demand from
    one tenant's two clients (one key, first come first served) is measured beside it,
    in the same run, as the baseline.

Everything (load generator, gateway, workers) shares this machine's cores. Prints one
JSON line. Run from the repository root: ``PYTHONPATH=. python bench/fairness.py
[--seconds 15] [--slots 2] [--headroom 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.served import ServedGateway, bundled_models, start_gateway

KEYS = {
    "interactive": "sk-bench-interactive-0123456789",
    "batch": "sk-bench-batch-0123456789",
    "tenant-a": "sk-bench-tenant-a-0123456789",
    "tenant-b": "sk-bench-tenant-b-0123456789",
    "shared": "sk-bench-shared-0123456789",
}
SENTENCE = "The quick brown fox jumps over the lazy dog near the riverbank at dawn."


def models(slots: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model of (a), with ``slots`` slots and all the cores, and the model of (b),
    with one slot: each is served alone by its own gateway (the core budget of a
    2-core box holds one warm MiniLM on all cores, not two)."""
    (minilm,) = bundled_models("minilm")
    rule = {"min-scale": 1, "max-scale": 1, "initial-scale": 1, "target": slots}
    shed = {**minilm, "scaling": {**rule, "container-concurrency": slots}}
    fair = {
        **minilm,
        "name": "minilm-fair",
        "scaling": {**rule, "target": 1, "container-concurrency": 1},
    }
    return shed, fair


def settings(headroom: int) -> dict[str, Any]:
    keys = [{"name": name, "key": key} for name, key in KEYS.items()]
    keys[1]["priority"] = "sheddable"
    return {"auth": {"api_keys": keys}, "traffic": {"sheddable_headroom": headroom}}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def call(client: httpx.AsyncClient, key: str, model: str) -> tuple[int, float]:
    start = time.perf_counter()
    r = await client.post(
        "/v1/embeddings",
        json={"model": model, "input": SENTENCE},
        headers={"authorization": f"Bearer {KEYS[key]}"},
    )
    return r.status_code, time.perf_counter() - start


async def open_loop(
    client: httpx.AsyncClient, key: str, model: str, rate: float, seconds: float
) -> list[tuple[int, float]]:
    """Requests at ``rate`` per second for ``seconds``, each sent on time whether the
    ones before it have finished or not."""
    tasks = []
    start = time.perf_counter()
    n = 0
    while (due := start + n / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(call(client, key, model)))
        n += 1
    return list(await asyncio.gather(*tasks))


async def batch_loop(url: str, rate: float, seconds: float) -> list[int]:
    """The batch client: open loop like :func:`open_loop`, on aiohttp (lighter per
    request than httpx), statuses only."""
    import aiohttp

    headers = {"authorization": f"Bearer {KEYS['batch']}"}
    body = {"model": "minilm", "input": SENTENCE}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def one() -> int:
            async with session.post("/v1/embeddings", json=body) as r:
                await r.read()
                return r.status

        tasks = []
        start = time.perf_counter()
        n = 0
        while (due := start + n / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one()))
            n += 1
        return list(await asyncio.gather(*tasks))


def batch_process(url: str, rate: float, seconds: float, out: Any) -> None:
    out.put(asyncio.run(batch_loop(url, rate, seconds)))


async def closed_loop(
    client: httpx.AsyncClient, key: str, model: str, outstanding: int, until: float
) -> int:
    """``outstanding`` requests always in flight until ``until``; the answers counted."""

    async def one() -> int:
        served = 0
        while time.perf_counter() < until:
            status, _ = await call(client, key, model)
            served += status == 200
        return served

    return sum(await asyncio.gather(*(one() for _ in range(outstanding))))


async def shedding(gw: ServedGateway, seconds: float, slots: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=gw.url, timeout=120, limits=limits) as client:
        for _ in range(20):  # warm
            await call(client, "interactive", "minilm")
        back_to_back = [(await call(client, "interactive", "minilm"))[1] for _ in range(50)]
        service = statistics.median(back_to_back)
        capacity = slots / service
        alone = await open_loop(client, "interactive", "minilm", 0.2 * capacity, seconds)
        # The batch client in its own process: its event loop never delays this one's.
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        batch = ctx.Process(
            target=batch_process, args=(gw.url, 10 * capacity, seconds + 1.5, results)
        )
        batch.start()
        await asyncio.sleep(1.0)  # the batch load is on before the measurement starts
        loaded = await open_loop(client, "interactive", "minilm", 0.2 * capacity, seconds)
        shed = await asyncio.to_thread(results.get, True, 120)
        batch.join(30)
    unloaded_p99 = p99([s for _, s in alone])
    loaded_p99 = p99([s for _, s in loaded])
    ratio = loaded_p99 / unloaded_p99
    errors = sum(1 for status, _ in loaded if status != 200)
    return {
        "service_ms": round(service * 1000, 2),
        "capacity_rps": round(capacity, 1),
        "interactive_rps": round(0.2 * capacity, 1),
        "batch_rps": round(10 * capacity, 1),
        "interactive_unloaded": {
            "n": len(alone),
            "p50_ms": round(statistics.median(s for _, s in alone) * 1000, 2),
            "p99_ms": round(unloaded_p99 * 1000, 2),
        },
        "interactive_loaded": {
            "n": len(loaded),
            "p50_ms": round(statistics.median(s for _, s in loaded) * 1000, 2),
            "p99_ms": round(loaded_p99 * 1000, 2),
            "errors": errors,
        },
        "batch": {
            "sent": len(shed),
            "served": shed.count(200),
            "shed_429": shed.count(429),
            "other": sum(1 for status in shed if status not in (200, 429)),
        },
        "p99_ratio": round(ratio, 3),
        "target_p99_ratio": 1.5,
        "ok": ratio <= 1.5 and errors == 0,
    }


async def shares(gw: ServedGateway, seconds: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        for _ in range(10):
            await call(client, "tenant-a", "minilm-fair")
        out: dict[str, Any] = {}
        for case, (heavy, light) in {
            "fair": ("tenant-a", "tenant-b"),
            "one_tenant_fcfs": ("shared", "shared"),
        }.items():
            until = time.perf_counter() + seconds
            a, b = await asyncio.gather(
                closed_loop(client, heavy, "minilm-fair", 10, until),
                closed_loop(client, light, "minilm-fair", 2, until),
            )
            out[case] = {
                "heavy_served": a,
                "light_served": b,
                "light_share": round(b / max(1, a + b), 3),
            }
    share = out["fair"]["light_share"]
    return {
        "demand": "10:2 outstanding (5:1), one slot",
        **out,
        "target_share": [0.45, 0.55],
        "ok": 0.45 <= share <= 0.55,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--headroom", type=int, default=1)
    args = parser.parse_args()
    shed, fair = models(args.slots)
    result: dict[str, Any] = {
        "bench": "fairness",
        "slots": args.slots,
        "sheddable_headroom": args.headroom,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, run in (
            ("shedding", shed, lambda gw: shedding(gw, args.seconds, args.slots)),
            ("fair_shares", fair, lambda gw: shares(gw, args.seconds)),
        ):
            gw = start_gateway(Path(tmp), [model], settings(args.headroom))
            try:
                result[name] = asyncio.run(run(gw))
            finally:
                gw.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
