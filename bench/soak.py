"""Soak: mixed traffic against ``edgeinfer serve`` while a fault injector kills, freezes
and resumes its workers at random (issue 19).

The gateway runs in its own process with the bundled MiniLM, Magika and SmolLM2 (one
replica each at most, every one starting from zero). ``--clients`` loops send, at
random: embeddings, Magika classifications, short SmolLM2 chat streams, bad requests
(each must be a 400) and streams the client hangs up on after the first event (each
client keeps to some of these kinds, ``ROTATION``). Every
``--fault-every`` seconds (on average) the injector picks a worker at random and
SIGKILLs it, or SIGSTOPs it and SIGCONTs it 1-4 s later (by then the gateway's health
check may have killed it: the SIGCONT then finds nothing).

A failure is *expected* when it is a 502 (or a stream's ``replica_died`` /
``replica_failed`` error event) of a request that was in flight while a fault hit its
model's worker: the in-flight requests of a killed or frozen replica. Anything else
that is not the planned answer is *unexpected*: 503, 504, 500, a bad request that was
not a 400, a transport error, a stream without ``[DONE]``.

Prints one JSON line: requests by outcome, expected and unexpected failures (the
first few unexpected ones each with its wall-clock start and end, its request id, the
gateway's log lines about it, which name the replica's port and pid, and the faults
injected into its model's workers around it), faults injected, p50/p99 per model of
the requests that succeeded, the gateway's RSS at start, after warm-up (a tenth of the
run, at least 10 s) and at the end. Run from the repository root:
``PYTHONPATH=. python bench/soak.py [--duration 60] [--clients 6] [--fault-every 8]``.
The release soak is ``--duration 1800``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runtime.scaling.health import HealthConfig
from tests.gateway.served import ADMIN_KEY, API_KEY, ServedGateway, bundled_models, start_gateway

MODELS = ("minilm", "magika", "smollm2")
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SHELL = "#!/bin/sh\necho hello\n"
# What each client sends, in turn by client number: --clients 6 is one of each.
CLIENT_KINDS = {
    "embed": ("embed",),
    "classify": ("classify",),
    "chat": ("chat_stream",),
    "mixed": ("embed", "classify", "bad_request", "hang_up"),
}
ROTATION = ("embed", "classify", "chat", "mixed", "embed", "classify")
LATE_S = 30.0
# The longest a frozen replica's health verdict can trail its freeze's end: the default
# health settings' probes (period + timeout) times the misses they need in a row.
_H = HealthConfig()
VERDICT_S = (_H.period_seconds + _H.timeout_seconds) * _H.failure_threshold


# What time.monotonic() reads add to be wall-clock time (samples are matched with the
# gateway's log by it).
_WALL = time.time() - time.monotonic()
_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
# Faults this close to a failure (seconds) are listed beside it.
_NEAR_S = VERDICT_S + 5.0


def _wall(monotonic: float) -> str:
    """A monotonic time as UTC wall-clock time, to the millisecond."""
    stamp = time.gmtime(monotonic + _WALL)
    return time.strftime("%H:%M:%S", stamp) + f".{int((monotonic + _WALL) % 1 * 1000):03d}"


@dataclass
class Outcome:
    model: str
    kind: str
    start: float
    end: float
    result: str  # ok | bad_request_400 | disconnected | status_NNN | error_CODE | transport
    detail: str = ""
    request_id: str = ""


@dataclass
class Fault:
    model: str
    pid: int
    kind: str  # kill | freeze
    at: float
    until: float  # a freeze's SIGCONT (a kill: == at)
    url: str = ""  # the worker's address, as /admin/models gave it


@dataclass
class Soak:
    gw: ServedGateway
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    stop: bool = False
    sent: int = 0

    # -- traffic ------------------------------------------------------------------

    async def client(self, http: httpx.AsyncClient, rng: random.Random, kinds: str) -> None:
        """Requests back to back, each of one of ``kinds`` (at random): a slow SmolLM2
        stream holds up only the clients that send them."""
        while not self.stop:
            kind = rng.choice(CLIENT_KINDS[kinds])
            # Sent as x-request-id: the gateway's log lines about the request carry it.
            self.sent += 1
            request_id = f"soak-{self.sent:07d}"
            sent = {"x-request-id": request_id}
            start = time.monotonic()
            model, result, detail = await getattr(self, kind)(http, rng, sent)
            outcome = Outcome(model, kind, start, time.monotonic(), result, detail, request_id)
            self.outcomes.append(outcome)

    async def embed(
        self, http: httpx.AsyncClient, rng: random.Random, sent: dict[str, str]
    ) -> tuple[str, str, str]:
        body = {"model": "minilm", "input": f"sentence number {rng.randrange(10**6)}"}
        return ("minilm", *await _plain(http, "/v1/embeddings", body, sent))

    async def classify(
        self, http: httpx.AsyncClient, rng: random.Random, sent: dict[str, str]
    ) -> tuple[str, str, str]:
        body = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": [SHELL]}]}
        return ("magika", *await _plain(http, "/v2/models/magika/infer", body, sent))

    async def chat_stream(
        self, http: httpx.AsyncClient, rng: random.Random, sent: dict[str, str]
    ) -> tuple[str, str, str]:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Count to {rng.randrange(3, 9)}."}],
            "max_tokens": 6,
            "stream": True,
        }
        return ("smollm2", *await _stream(http, body, sent, hang_up=False))

    async def hang_up(
        self, http: httpx.AsyncClient, rng: random.Random, sent: dict[str, str]
    ) -> tuple[str, str, str]:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 64,
            "stream": True,
        }
        return ("smollm2", *await _stream(http, body, sent, hang_up=True))

    async def bad_request(
        self, http: httpx.AsyncClient, rng: random.Random, sent: dict[str, str]
    ) -> tuple[str, str, str]:
        bad = rng.choice(
            [
                {"model": "smollm2", "messages": [], "stream": True, "stream_options": "yes"},
                {"model": "minilm", "input": {"not": "text"}},
                {"input": "no model"},
                {"model": "smollm2", "messages": "not a list"},
            ]
        )
        path = "/v1/embeddings" if "input" in bad else "/v1/chat/completions"
        model = str(bad.get("model", "-"))
        try:
            r = await http.post(path, json=bad, headers=sent)
        except httpx.TransportError as exc:
            return model, "transport", repr(exc)
        return model, "bad_request_400" if r.status_code == 400 else f"status_{r.status_code}", ""

    # -- faults -------------------------------------------------------------------

    async def injector(self, admin: httpx.AsyncClient, every: float, rng: random.Random) -> None:
        while not self.stop:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * every)
            if self.stop:
                return
            workers = await _workers(admin)
            if not workers:
                continue
            model, pid, url = rng.choice(workers)
            now = time.monotonic()
            if rng.random() < 0.5:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.faults.append(Fault(model, pid, "kill", now, now, url))
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                pause = rng.uniform(1.0, 4.0)
                self.faults.append(Fault(model, pid, "freeze", now, now + pause, url))
                await asyncio.sleep(pause)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def expected(self, o: Outcome) -> bool:
        """A replica failure of a request in flight while its model's worker was hit,
        or until the health check's verdict on a freeze: a replica that missed its
        probes while frozen is killed once the last miss is in, which can come a
        little after its SIGCONT (a resumed worker answers its backlog first), and the
        requests it took meanwhile go with it."""
        replica_failure = o.result in ("status_502", "error_replica_died", "error_replica_failed")
        return replica_failure and any(
            f.model == o.model
            and o.start <= f.until + (VERDICT_S if f.kind == "freeze" else 0.0)
            and f.at <= o.end
            for f in self.faults
        )

    def sample(self, o: Outcome, log: list[str]) -> dict[str, Any]:
        """An unexpected failure as the JSON line shows it: when (UTC wall clock), the
        gateway's log records that name its request id (the retry's name the replica's
        port and pid) and the faults its model's workers took around it."""
        near = [
            {
                "kind": f.kind,
                "pid": f.pid,
                "url": f.url,
                "at": _wall(f.at),
                **({"until": _wall(f.until)} if f.kind == "freeze" else {}),
            }
            for f in self.faults
            if f.model == o.model and f.at - _NEAR_S <= o.end and o.start <= f.until + _NEAR_S
        ]
        return {
            "model": o.model,
            "kind": o.kind,
            "result": o.result,
            "detail": o.detail[:160],
            "request_id": o.request_id,
            "start": _wall(o.start),
            "end": _wall(o.end),
            "gateway_log": [r[:300] for r in log if o.request_id in r][:4],
            "faults_near": near,
        }


def _log_records(path: Path) -> list[str]:
    """The gateway's log, one string per record (rich wraps a long message onto
    indented lines that follow it, and leaves out a time the record before showed)."""
    records: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return records
    for line in text.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if line.startswith(" ") and records and first not in _LEVELS:
            records[-1] += " " + line.strip()
        else:
            records.append(line.strip())
    return records


async def _plain(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], sent: dict[str, str]
) -> tuple[str, str]:
    try:
        r = await http.post(path, json=body, headers=sent)
    except httpx.TransportError as exc:
        return "transport", repr(exc)
    return ("ok", "") if r.status_code == 200 else (f"status_{r.status_code}", r.text[:200])


async def _stream(
    http: httpx.AsyncClient, body: dict[str, Any], sent: dict[str, str], hang_up: bool
) -> tuple[str, str]:
    last = ""
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=sent) as r:
            if r.status_code != 200:
                await r.aread()
                return f"status_{r.status_code}", r.text[:200]
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                last = line[6:]
                if hang_up:
                    return "disconnected", ""
    except httpx.TransportError as exc:
        if last.startswith("{") and '"error"' in last:
            return f"error_{json.loads(last)['error']['code']}", last[:200]
        return "transport", repr(exc)
    if last == "[DONE]":
        return "ok", ""
    if last.startswith("{") and '"error"' in last:
        return f"error_{json.loads(last)['error']['code']}", last[:200]
    return "no_done", last[:200]


async def _workers(admin: httpx.AsyncClient) -> list[tuple[str, int, str]]:
    try:
        r = await admin.get("/admin/models")
    except httpx.TransportError:
        return []
    return [
        (m["model"], i["pid"], i["url"])
        for m in r.json()["models"]
        for i in m["instances"]
        if i["state"] == "ready" and i["pid"]
    ]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return {"n": len(ms), "p50": round(statistics.median(ms), 1), "p99": round(p99, 1)}


async def run(args: argparse.Namespace, gw: ServedGateway) -> dict[str, Any]:
    soak = Soak(gw)
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.clients * 2)
    timeout = httpx.Timeout(330.0)
    async with (
        httpx.AsyncClient(base_url=gw.url, headers=HEADERS, timeout=timeout, limits=limits) as http,
        httpx.AsyncClient(
            base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        ) as admin,
    ):
        rss_start = gw.rss_bytes()
        began = time.monotonic()
        clients = [
            asyncio.create_task(
                soak.client(http, random.Random(rng.random()), ROTATION[i % len(ROTATION)])
            )
            for i in range(args.clients)
        ]
        warm_up = max(10.0, args.duration / 10)
        await asyncio.sleep(warm_up)  # every model cold-started; then faults begin
        rss_warm = gw.rss_bytes()
        injector = asyncio.create_task(soak.injector(admin, args.fault_every, rng))
        await asyncio.sleep(max(0.0, args.duration - warm_up))
        soak.stop = True
        await injector  # every frozen worker resumed
        # Requests still running get a while to end; any left then are not counted.
        _, late = await asyncio.wait(clients, timeout=LATE_S)
        for task in late:
            task.cancel()
        elapsed = time.monotonic() - began
    rss_end = gw.rss_bytes()
    log = _log_records(gw.log)
    outcomes = Counter(o.result for o in soak.outcomes)
    failures = [
        o for o in soak.outcomes if o.result not in ("ok", "bad_request_400", "disconnected")
    ]
    expected = [o for o in failures if soak.expected(o)]
    unexpected = [o for o in failures if not soak.expected(o)]
    mib = 1 << 20
    return {
        "bench": "soak",
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "left_running_at_the_end": len(late),
        "requests": len(soak.outcomes),
        "outcomes": dict(outcomes.most_common()),
        "by_kind": dict(Counter(o.kind for o in soak.outcomes).most_common()),
        "expected_failures": len(expected),
        "unexpected_failures": len(unexpected),
        "unexpected_samples": [soak.sample(o, log) for o in unexpected[:8]],
        "faults": dict(Counter(f.kind for f in soak.faults)),
        "latency_ms": {
            m: _percentiles(
                [o.end - o.start for o in soak.outcomes if o.model == m and o.result == "ok"]
            )
            for m in MODELS
        },
        "gateway_rss_mib": {
            "start": round(rss_start / mib, 1),
            "after_warm_up": round(rss_warm / mib, 1),
            "end": round(rss_end / mib, 1),
            "growth_after_warm_up_pct": round(100 * (rss_end - rss_warm) / rss_warm, 1),
        },
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (release: 1800)")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--fault-every", type=float, default=8.0, help="mean seconds")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the gateway's and workers' logs here"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = args.logs or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        # Wide enough that rich seldom wraps the gateway's log lines.
        os.environ.setdefault("COLUMNS", "240")
        models = bundled_models(*MODELS)
        gw = start_gateway(log_dir, models)
        try:
            line = asyncio.run(run(args, gw))
        finally:
            code = gw.stop()
        line["gateway_exit"] = code
        print(json.dumps(line))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
