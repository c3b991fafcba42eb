"""What the WASM-host benchmarks share: a config of WASM-engine and native models, an
``edgeinfer serve`` on it, first-byte timing, waiting for models to reach zero, and the
resident memory of a process tree. ``serve_cold_starts`` is ``bench/wasm_cold_start.py``'s
gateway measurement (its docstring says what is measured)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "wasm-modules" / "packages"
EMBED = {"input": "a cold start in the edge host"}
CLASSIFY = {
    "inputs": [
        {"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\necho hi\n"]}
    ]
}
FAST_ZERO = {
    "min-scale": 0,
    "initial-scale": 0,
    "max-scale": 1,
    "window": "6s",
    "scale-to-zero-pod-retention-period": "0s",
    "timeout": "60s",
}


def engine_model(name: str, package: str, scaling: dict[str, Any]) -> dict[str, Any]:
    """A model on one of the engine packages (``minilm-engine``, ``magika-engine``)."""
    spec: dict[str, Any] = {
        "name": name,
        "task": "embedding" if package == "minilm-engine" else "classify",
        "artifacts": {"wasm": str(PACKAGES / package)},
        "runtimes": ["wasm"],
        "scaling": scaling,
    }
    spec["options"] = (
        {"max_input_tokens": 256} if package == "minilm-engine" else {"preprocess": "magika"}
    )
    return spec


def native_models(scaling: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundled ``minilm`` and ``magika`` (onnxruntime) with ``scaling``."""
    from runtime.spec.model import bundled_config_path

    raw = yaml.safe_load(bundled_config_path().read_text())
    picked = [m for m in raw["models"] if m["name"] in ("minilm", "magika")]
    for m in picked:
        m["scaling"] = dict(scaling)
        # A goal a cold start meets, so that the manager does not keep a replica warm
        # (a model at zero is what is measured).
        m["latency"] = {"p95_ms": 60000}
    return picked


def request_for(model: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = model["name"]
    if model["task"] == "embedding":
        return "/v1/embeddings", {"model": name, **EMBED}
    return f"/v2/models/{name}/infer", CLASSIFY


class Served:
    """``edgeinfer serve --config`` on a free port, its output in ``log``."""

    def __init__(self, models: list[dict[str, Any]], gateway: dict[str, Any]) -> None:
        from runtime.scaling.replica import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-"))
        self.port = free_port()
        config = self.dir / "models.yaml"
        config.write_text(yaml.safe_dump({"gateway": gateway, "models": models}))
        self.log = self.dir / "serve.log"
        env = {
            **os.environ,
            "EDGEINFER_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
            "EDGEINFER_MEASURE_MISSING": "0",  # measured by the bench, not in the background
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=out,
                env=env,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the gateway did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def first_byte(self, path: str, body: dict[str, Any]) -> tuple[float, int]:
        """Seconds from sending the request to the first byte of the answer's body, and
        its status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = json.dumps(body)
        try:
            start = time.perf_counter()
            conn.request("POST", path, data, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read(1)
            elapsed = time.perf_counter() - start
            r.read()
            return elapsed, r.status
        finally:
            conn.close()

    def admin(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/admin/models")
        assert status == 200, body
        return {m["model"]: m for m in json.loads(body)["models"]}

    def wait_zero(self, names: list[str], limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            admin = self.admin()
            if all(not admin[n]["instances"] for n in names):
                return
            time.sleep(0.2)
        raise SystemExit(f"models did not scale to zero in {limit:.0f}s")

    def tree_rss_bytes(self) -> dict[str, int]:
        """Resident memory of the gateway and every process under it, by command."""
        return tree_rss(self.proc.pid)

    def tree_pss_bytes(self) -> dict[str, int]:
        """Proportional memory of the same (shared pages divided among their users)."""
        return tree_pss(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_rss(root: int) -> dict[str, int]:
    """RSS (bytes) of ``root`` and its descendants, keyed ``pid:kind`` (Linux ``/proc``).
    RSS counts a file page once per mapping of it, so the WASM host's copy-on-write
    instances of one snapshot each count the weights again: see :func:`tree_pss`."""
    return _tree(root, "VmRSS:", "status")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by ``root`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for key in tree_rss(root):
        pid = key.split(":")[0]
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def tree_pss(root: int) -> dict[str, int]:
    """PSS (bytes) of the same processes: each page divided among those mapping it, so
    the sum is the memory the tree holds (``/proc/PID/smaps_rollup``)."""
    return _tree(root, "Pss:", "smaps_rollup")


def _tree(root: int, field: str, source: str) -> dict[str, int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: dict[str, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            text = Path(f"/proc/{pid}/{source}").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        lines = text.splitlines()
        value = next((int(x.split()[1]) * 1024 for x in lines if x.startswith(field)), 0)
        kind = "wasm-host" if "--host-wasm" in cmd else "forkserver/worker"
        if pid == root:
            kind = "gateway"
        out[f"{pid}:{kind}"] = value
    return out


def serve_cold_starts(rounds: int) -> dict[str, Any]:
    models = [
        engine_model("minilm-engine", "minilm-engine", FAST_ZERO),
        engine_model("magika-engine", "magika-engine", FAST_ZERO),
        *native_models(FAST_ZERO),
    ]
    names = [m["name"] for m in models]
    served = Served(models, {"tick_seconds": 0.25, "scale_to_zero_grace_seconds": 0})
    try:
        time.sleep(3.0)  # the WASM host starts with the gateway (keep_warm): let it
        first: dict[str, float] = {}
        for m in models:
            path, body = request_for(m)
            seconds, status = served.first_byte(path, body)
            assert status == 200, (m["name"], status)
            first[m["name"]] = seconds
        served.wait_zero(names)
        cold: dict[str, list[float]] = {n: [] for n in names}
        warm: dict[str, list[float]] = {n: [] for n in names}
        phases: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        in_host: dict[str, bool] = {}
        for _ in range(rounds):
            for m in models:
                path, body = request_for(m)
                seconds, status = served.first_byte(path, body)
                assert status == 200, (m["name"], status)
                cold[m["name"]].append(seconds)
                warm[m["name"]].append(
                    statistics.median(served.first_byte(path, body)[0] for _ in range(5))
                )
                # Looked at now, while the model still has its replica (a slow native
                # cold start of the next model can outlast this one's window).
                entry = served.admin()[m["name"]]
                phases[m["name"]].append(entry["last_cold_start"]["phases"])
                in_host[m["name"]] = any("/m/" in i["url"] for i in entry["instances"])
            served.wait_zero(names)
    finally:
        served.stop()

    def ms(x: float) -> float:
        return round(x * 1000, 2)

    out: dict[str, Any] = {}
    for n in names:
        out[n] = {
            "cold_first_byte_ms": ms(statistics.median(cold[n])),
            "cold_rounds_ms": [ms(x) for x in cold[n]],
            "warm_first_byte_ms": ms(statistics.median(warm[n])),
            "first_load_ms": ms(first[n]),
            "phases_ms": {
                k: ms(statistics.median(p.get(k, 0.0) for p in phases[n]))
                for k in ("spawn", "load", "warmup")
            },
        }
    targets = {"minilm-engine": 15.0, "magika-engine": 30.0}
    return {
        "bench": "wasm_cold_start_serve",
        "rounds": rounds,
        "models": out,
        "targets_ms": targets,
        "wasm_vs_native_cold": {
            "minilm": round(
                out["minilm"]["cold_first_byte_ms"] / out["minilm-engine"]["cold_first_byte_ms"], 1
            ),
            "magika": round(
                out["magika"]["cold_first_byte_ms"] / out["magika-engine"]["cold_first_byte_ms"], 1
            ),
        },
        "in_host_checked": in_host,
        "pass": all(out[n]["cold_first_byte_ms"] <= t for n, t in targets.items()),
    }


CHAT = {
    "messages": [{"role": "user", "content": "Name one colour."}],
    "max_tokens": 4,
    "temperature": 0,
    "stream": True,
}


def wasi_nn_model(scaling: dict[str, Any]) -> dict[str, Any]:
    """SmolLM2 through the wasi-nn GGML guest (``smollm2-wasi-nn``), in the WASM host."""
    return {
        "name": "smollm2-wasi-nn",
        "task": "chat",
        "artifacts": {"wasm": str(PACKAGES / "smollm2-wasi-nn")},
        "runtimes": ["wasm"],
        "scaling": scaling,
        "options": {"context_length": 2048, "parallel": 2},
    }


def native_chat(scaling: dict[str, Any]) -> dict[str, Any]:
    """The bundled ``smollm2`` on llama.cpp only (a worker process)."""
    from runtime.spec.model import bundled_config_path

    raw = yaml.safe_load(bundled_config_path().read_text())
    (m,) = [m for m in raw["models"] if m["name"] == "smollm2"]
    m["runtimes"] = ["llama"]
    m["scaling"] = dict(scaling)
    m["latency"] = {"p95_ms": 60000}
    return dict(m)


def first_token(served: Served, model: str) -> float:
    """Seconds from sending a streamed chat request to the first event with text."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=300)
    try:
        start = time.perf_counter()
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": model, **CHAT}),
            {"Content-Type": "application/json"},
        )
        r = conn.getresponse()
        assert r.status == 200, (model, r.status, r.read()[:300])
        while True:
            line = r.readline()
            if not line:
                raise SystemExit(f"{model}: the stream ended before a token")
            if line.startswith(b"data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    elapsed = time.perf_counter() - start
                    r.read()
                    return elapsed
    finally:
        conn.close()


def serve_first_tokens(rounds: int) -> dict[str, Any]:
    """SmolLM2's first token from zero: the wasi-nn guest in the warm host with its
    weights resident (the model released, its GGUF kept loaded) and evicted (a host
    memory budget of 16 MiB unloads every idle model), the native llama.cpp worker
    from zero beside them; each side warm too (median of 3)."""
    out: dict[str, Any] = {}
    for label, budget in (("resident", None), ("evicted", 16)):
        models = [wasi_nn_model(FAST_ZERO)]
        if budget is None:
            models.append(native_chat(FAST_ZERO))
        gateway: dict[str, Any] = {"tick_seconds": 0.25, "scale_to_zero_grace_seconds": 0}
        if budget is not None:
            gateway["wasm_host"] = {"memory_budget_mib": budget}
        names = [m["name"] for m in models]
        served = Served(models, gateway)
        try:
            time.sleep(3.0)  # the host starts with the gateway (keep_warm)
            first = {n: first_token(served, n) for n in names}
            served.wait_zero(names)
            cold: dict[str, list[float]] = {n: [] for n in names}
            warm: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(rounds):
                for n in names:
                    cold[n].append(first_token(served, n))
                    warm[n].append(statistics.median(first_token(served, n) for _ in range(3)))
                served.wait_zero(names)
        finally:
            served.stop()
        for n in names:
            key = "smollm2-wasi-nn weights " + label if n == "smollm2-wasi-nn" else n
            out[key] = {
                "cold_first_token_ms": round(statistics.median(cold[n]) * 1e3, 1),
                "cold_rounds_ms": [round(x * 1e3, 1) for x in cold[n]],
                "warm_first_token_ms": round(statistics.median(warm[n]) * 1e3, 1),
                "first_load_ms": round(first[n] * 1e3, 1),
            }
    out["target_ms"] = {"smollm2-wasi-nn weights resident": 100.0}
    return out
