"""The GPU check's steps: each as it runs on a GPU machine (``real_*``) and as far as it
can be checked without one (``dry_*``). A step raises :class:`Skipped` or
:class:`Failed`, or returns; ``bench/gpu_check.py`` runs them in order and reports.

The project is called through its command line (``python -m gateway`` is
``edgeinfer``) and the benches, never through deep imports, so the check follows the
project when its modules move. Standard library only (the GPU machine runs it before
anything is installed); NVML (``pynvml``) is imported only on the GPU machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gpu_bundle as gb
import gpu_plan as gp

__all__ = ["Ctx", "Failed", "Skipped", "Step"]

# Flags each command the check runs must have (the dry run reads them from --help).
FLAGS = {
    "worker": ("--model", "--device", "cuda", "--port", "--config"),
    "serve": ("--config", "--port", "--host"),
    "profile": ("--config", "--model", "--force", "--requests"),
    "plan": ("--config", "--hardware", "--json"),
    "models": ("--config",),
}
WORKER_OVERHEAD_FLAGS = ("--device", "--part", "--runs", "--tokens")


class Skipped(Exception):
    """The step cannot run here; the message says why."""


class Failed(Exception):
    """The step ran and did not pass; the message says what failed."""


@dataclass
class Step:
    name: str
    status: str = "passed"
    reason: str = ""
    timeout_s: float = 60.0
    wall_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


@dataclass
class Ctx:
    """What every step needs: the repository, the command line of ``edgeinfer``, the
    environment of the processes it starts, a scratch folder and the deadline."""

    root: Path
    cli: list[str]
    python: str
    env: dict[str, str]
    work: Path
    deadline: float
    step: Step = field(default_factory=lambda: Step("none"))
    plan: dict[str, Any] = field(default_factory=dict)
    site: Path | None = None

    def left(self, wanted: float) -> float:
        left = min(wanted, self.deadline - time.monotonic())
        if left <= 1:
            raise Failed("no time left under the check's overall limit")
        return left

    def run(
        self, cmd: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (recorded in the step) within ``timeout`` and the deadline."""
        self.step.commands.append(shlex.join(cmd))
        try:
            return subprocess.run(
                cmd,
                cwd=self.root,
                env=env or self.env,
                capture_output=True,
                text=True,
                timeout=self.left(timeout),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Failed(f"timed out: {shlex.join(cmd)}") from None

    def edgeinfer(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run([*self.cli, *args], timeout)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise Failed(what)
        self.step.checks.append(what)


def _tail(text: str, n: int = 600) -> str:
    return text[-n:].strip()


def check_flags(ctx: Ctx, command: str) -> None:
    """``edgeinfer COMMAND --help`` lists every flag the check passes it."""
    out = ctx.edgeinfer(command, "--help", timeout=60)
    text = out.stdout + out.stderr
    missing = [f for f in FLAGS[command] if f not in text]
    ctx.check(
        out.returncode == 0 and not missing,
        f"edgeinfer {command} has {' '.join(FLAGS[command])}"
        + (f" (missing: {' '.join(missing)}; rc {out.returncode})" if missing else ""),
    )


def validate_config(ctx: Ctx, path: Path) -> None:
    out = ctx.edgeinfer("models", "--config", str(path), timeout=60)
    ctx.check(
        out.returncode == 0,
        f"the project's spec loader accepts {path.name}"
        + ("" if out.returncode == 0 else f": {_tail(out.stderr)}"),
    )


# -- step 0: what was prepared -----------------------------------------------------------


def fake_sdist(root: Path) -> Path:
    """A FAKE llama-cpp-python source tree: the layout of the real sdist (empty files),
    so the trimming can be checked where no sdist is at hand."""
    top = root / "llama_cpp_python-0.0.0"
    vendor = top / "vendor" / "llama.cpp"
    for rel in (
        "CMakeLists.txt",
        "llama_cpp/__init__.py",
        ".git/HEAD",
        "docs/index.md",
        "tests/test_llama.py",
        "examples/high_level_api/x.py",
        "vendor/llama.cpp/CMakeLists.txt",
        "vendor/llama.cpp/src/llama.cpp",
        "vendor/llama.cpp/include/llama.h",
        "vendor/llama.cpp/models/ggml-vocab-llama.gguf",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py",
        "vendor/llama.cpp/tools/mtmd/mtmd.cpp",
        "vendor/llama.cpp/tools/server/server.cpp",
        "vendor/llama.cpp/ggml/src/ggml.c",
        *(
            f"vendor/llama.cpp/ggml/src/ggml-{b}/CMakeLists.txt"
            for b in ("cpu", "cuda", "blas", "rpc", "metal", "vulkan", "sycl")
        ),
    ):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x\n")
    assert vendor.is_dir()
    return top


def dry_prepare(ctx: Ctx, bundles: Path) -> None:
    manifest = bundles / "a" / gb.MANIFEST
    if manifest.is_file():
        m = gb.Manifest.read(manifest)
        for b in m.bundles:
            problems = gb.check_bundle(bundles, m, b.name)
            ctx.check(not problems, f"bundle {b.name} is whole" + "; ".join(problems))
        ctx.step.figures = {
            "bundles": {b.name: b.size for b in m.bundles},
            "budget": m.budget,
            "llama_cpp_version": m.llama_cpp_version,
        }
        return
    top = fake_sdist(ctx.work / "fake-sdist")
    kept = gb.trim_source(top)
    ctx.check(
        kept["backends"] == ["ggml-blas", "ggml-cpu", "ggml-cuda", "ggml-rpc"],
        f"trim keeps the cpu, cuda, blas and rpc backends only: {kept['backends']}",
    )
    ctx.check(kept["tools"] == ["mtmd"], f"trim keeps tools/mtmd only: {kept['tools']}")
    ctx.check(
        not (top / ".git").exists() and not (top / "vendor/llama.cpp/models").exists(),
        "trim drops .git and the vendored models",
    )
    packed = gb.pack_source(top, ctx.work / "fake-trimmed.tar.gz")
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    ctx.check(
        f"{top.name}/vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt" in names,
        "the packed tree holds the CUDA backend",
    )
    ctx.step.figures = {"fake_sdist": True, "removed": len(kept["removed"])}
    ctx.step.reason = (
        f"no prepared bundles in {bundles}: trimmed a fake sdist "
        "(`python bench/gpu_check.py --prepare` downloads the real one)"
    )


# -- step 1: the CUDA build ----------------------------------------------------------------


def cuda_arch(compute_cap: str) -> str:
    """``nvidia-smi --query-gpu=compute_cap`` output ("9.0") as CMake's arch ("90")."""
    first = compute_cap.strip().splitlines()[0].strip() if compute_cap.strip() else ""
    major, _, minor = first.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"unexpected compute capability {compute_cap!r}")
    return f"{major}{minor}"


def build_command(
    python: str, source: Path, wheel_dir: Path, arch: str
) -> tuple[list[str], dict[str, str]]:
    env = {
        "CMAKE_ARGS": f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={arch}",
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
    }
    cmd = [
        python,
        "-m",
        "pip",
        "wheel",
        "--no-build-isolation",
        "--no-deps",
        "--no-index",
        "-w",
        str(wheel_dir),
        str(source),
    ]
    return cmd, env


def dry_build(ctx: Ctx) -> None:
    ctx.check(cuda_arch("9.0\n") == "90", "compute capability 9.0 builds for arch 90")
    cmd, env = build_command("python3", Path("src"), Path("wheels"), "90")
    ctx.step.commands += [
        "nvidia-smi --query-gpu=compute_cap --format=csv,noheader",
        " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd),
    ]
    raise Skipped("needs nvcc and an NVIDIA GPU (dry run)")


# -- step 2: tokens/s through the worker against raw llama-cpp-python ---------------------


def _overhead_cmd(ctx: Ctx, part: str, runs: int) -> list[str]:
    return [
        ctx.python,
        "bench/worker_overhead.py",
        "--device",
        "cuda",
        "--part",
        part,
        "--runs",
        str(runs),
        "--tokens",
        "128",
    ]


def dry_worker(ctx: Ctx) -> None:
    check_flags(ctx, "worker")
    out = ctx.run([ctx.python, "bench/worker_overhead.py", "--help"], 60)
    missing = [f for f in WORKER_OVERHEAD_FLAGS if f not in out.stdout]
    ctx.check(
        out.returncode == 0 and not missing,
        "bench/worker_overhead.py has --device, --part, --runs, --tokens"
        + (f" (missing {missing})" if missing else ""),
    )
    ctx.step.commands.append(shlex.join(_overhead_cmd(ctx, "generation", 7)))
    raise Skipped("needs an NVIDIA GPU (dry run)")


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise Failed(f"no JSON line in the output: {_tail(text)}")


def real_worker(ctx: Ctx) -> None:
    out = ctx.run(_overhead_cmd(ctx, "generation", 7), 150)
    if out.returncode != 0:
        raise Failed(f"worker_overhead --device cuda failed: {_tail(out.stdout + out.stderr)}")
    gen = _last_json(out.stdout)["generation_tokens_per_s"]
    ctx.step.figures["smollm2_tokens_per_s"] = gen
    probe = ctx.run(
        [ctx.python, "-c", "import onnxruntime as o; print(o.get_available_providers())"], 60
    )
    providers = probe.stdout.strip()
    if "CUDAExecutionProvider" not in providers:
        ctx.step.figures["minilm"] = (
            "skipped: onnxruntime here has no CUDAExecutionProvider "
            f"({providers or _tail(probe.stderr)}); onnxruntime-gpu is not in the image and "
            "its wheel is far over what a call carries"
        )
    else:
        emb = ctx.run(_overhead_cmd(ctx, "embeddings", 5), 120)
        if emb.returncode != 0:
            ctx.step.figures["minilm"] = f"failed: {_tail(emb.stdout + emb.stderr)}"
        else:
            ctx.step.figures["minilm_embeddings_per_s"] = _last_json(emb.stdout)["embeddings_per_s"]
    ctx.check(gen["ratio"] >= 0.95, f"worker/raw tokens/s {gen['ratio']} >= 0.95")


# -- step 3: profiles of the -cuda tiers and the plan ------------------------------------


def _configs(ctx: Ctx) -> tuple[Path, Path]:
    return (
        gp.write_json(ctx.work / "gpu-models.yaml", gp.gpu_config()),
        gp.write_json(ctx.work / "h200.yaml", gp.h200_hardware()),
    )


def _plan(ctx: Ctx, config: Path, *extra: str) -> dict[str, Any]:
    out = ctx.edgeinfer("plan", "--config", str(config), "--json", *extra, timeout=90)
    if out.returncode != 0:
        raise Failed(f"edgeinfer plan failed (rc {out.returncode}): {_tail(out.stderr)}")
    try:
        return dict(json.loads(out.stdout))
    except ValueError:
        raise Failed(f"edgeinfer plan --json printed no JSON: {_tail(out.stdout)}") from None


def dry_profile_plan(ctx: Ctx) -> None:
    config, hardware = _configs(ctx)
    check_flags(ctx, "profile")
    check_flags(ctx, "plan")
    check_flags(ctx, "models")
    validate_config(ctx, config)
    ctx.plan = _plan(ctx, config, "--hardware", str(hardware))
    gpus = ctx.plan.get("inventory", {}).get("gpus", [])
    ctx.check(
        len(gpus) == 1 and gpus[0].get("memory_total_mib") == 143771,
        "edgeinfer plan --hardware reads the H200 file (one GPU, 143771 MiB)",
    )
    problems = gp.cuda_problems(ctx.plan, gp.PACKED, measured=False)
    ctx.check(
        not problems,
        "the plan on the H200 places each model on its CUDA tier"
        + ("" if not problems else f": {problems}"),
    )
    ctx.step.commands.append(shlex.join([*ctx.cli, "profile", "--config", str(config), "--force"]))
    ctx.step.figures["dry_plan_tiers"] = {m: gp.chosen(ctx.plan, m)["tier"] for m in gp.PACKED}
    raise Skipped("measured CUDA profiles need an NVIDIA GPU (dry run)")


def real_profile_plan(ctx: Ctx) -> None:
    config, _ = _configs(ctx)
    out = ctx.edgeinfer(
        "profile", "--config", str(config), "--force", "--requests", "8", timeout=240
    )
    lines = [
        ln for ln in out.stderr.splitlines() if ": " in ln and ("measured" in ln or "skipped" in ln)
    ]
    ctx.step.figures["profile"] = lines[-8:]
    if out.returncode != 0:
        raise Failed(f"edgeinfer profile failed (rc {out.returncode}): {_tail(out.stderr)}")
    ctx.plan = _plan(ctx, config)
    for model in gp.PACKED:
        rows = {c["tier"]: c for c in gp._decision(ctx.plan, model)["candidates"]}
        ctx.step.figures[model] = {
            tier: {
                k: c.get(k)
                for k in (
                    "profile",
                    "predicted_p95_ms",
                    "cold_start_ms",
                    "tokens_per_s",
                    "memory_mib",
                    "verdict",
                )
            }
            for tier, c in rows.items()
        }
    problems = gp.cuda_problems(ctx.plan, gp.PACKED, measured=True)
    ctx.check(
        not problems,
        "the plan's GPU rows carry measured figures and the GPU is chosen"
        + ("" if not problems else f": {problems}"),
    )


# -- step 4: two models packed on the one GPU ----------------------------------------------


class Serve:
    """An ``edgeinfer serve`` process on a free loopback port, stopped on exit."""

    def __init__(self, ctx: Ctx, config: Path, name: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ctx.work / f"serve-{name}.log"
        cmd = [*ctx.cli, "serve", "--config", str(config), "--port", str(self.port)]
        ctx.step.commands.append(shlex.join(cmd))
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ctx.root,
            env=ctx.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ctx = ctx

    def __enter__(self) -> Serve:
        end = time.monotonic() + self.ctx.left(60)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise Failed(f"serve exited {self.proc.returncode}: {_tail(self.log.read_text())}")
            try:
                self.get("/v2/health/live", 2)
                return self
            except OSError:
                time.sleep(0.2)
        raise Failed("serve did not come up in 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()

    def get(self, path: str, timeout: float = 10) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return dict(json.loads(r.read() or b"{}"))

    def chat(self, model: str, timeout: float = 120) -> int:
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8,
                "temperature": 0,
            }
        ).encode()
        req = urllib.request.Request(
            self.url + "/v1/chat/completions", body, {"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["model"]: m for m in self.get("/admin/models")["models"]}


def dry_pack(ctx: Ctx) -> None:
    check_flags(ctx, "serve")
    ctx.check(bool(ctx.plan), "step profile_plan gave a plan")
    rows = [gp.chosen(ctx.plan, m) for m in gp.PACKED]
    if all(r.get("profile") != "none" for r in rows):
        problems = gp.packing_problems(ctx.plan, gp.PACKED)
        ctx.check(
            not problems,
            "the plan packs both models on GPU 0 with memory figures"
            + ("" if not problems else f": {problems}"),
        )
    else:  # a fresh state folder holds no profile, so the plan sizes nothing
        ctx.step.figures["packing"] = "not checked: no profiles here, the plan has no sizes"
    raise Skipped("NVML and two CUDA workers need an NVIDIA GPU (dry run)")


def _nvml_used() -> tuple[float, dict[int, float]]:
    """GPU 0's used memory (MiB) and the compute processes' own (pid -> MiB)."""
    import pynvml  # nvidia-ml-py, on the GPU machine

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = pynvml.nvmlDeviceGetMemoryInfo(h).used / (1 << 20)
        procs = {
            p.pid: (p.usedGpuMemory or 0) / (1 << 20)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        }
        return used, procs
    finally:
        pynvml.nvmlShutdown()


def real_pack(ctx: Ctx) -> None:
    problems = gp.packing_problems(ctx.plan, gp.PACKED)
    ctx.check(
        not problems,
        "the plan packs both models on GPU 0" + ("" if not problems else f": {problems}"),
    )
    planned = {m: float(gp.chosen(ctx.plan, m)["memory_mib"]) for m in gp.PACKED}
    base, _ = _nvml_used()
    config, _ = _configs(ctx)
    with Serve(ctx, config, "pack") as gw:
        codes = {m: gw.chat(m, timeout=ctx.left(120)) for m in gp.PACKED}
        ctx.check(all(c == 200 for c in codes.values()), f"a chat to each model answered: {codes}")
        state = gw.models()
        pids = {}
        for m in gp.PACKED:
            ready = [i for i in state[m]["instances"] if i["state"] == "ready"]
            ctx.check(
                any(i["tier"] == "llama-cuda" for i in ready),
                f"{m} has a ready llama-cuda replica ({[i['tier'] for i in ready]})",
            )
            pids[m] = [i["pid"] for i in ready if i["tier"] == "llama-cuda"]
        used, procs = _nvml_used()
    per_model = {m: round(sum(procs.get(p, 0.0) for p in pids[m]), 1) for m in gp.PACKED}
    delta = round(used - base, 1)
    ctx.step.figures.update(
        {
            "planned_mib": planned,
            "nvml_used_delta_mib": delta,
            "nvml_per_model_mib": per_model,
            "nvml_processes": {str(k): round(v, 1) for k, v in procs.items()},
        }
    )
    if all(per_model.values()):
        over = {m: (per_model[m], planned[m]) for m in gp.PACKED if per_model[m] > planned[m]}
        ctx.check(
            not over,
            f"each model's GPU memory (NVML, per process) within the plan: {over or 'yes'}",
        )
    ctx.check(
        delta <= sum(planned.values()),
        f"GPU memory used while both are loaded, {delta} MiB, within the plan's "
        f"{sum(planned.values()):.0f} MiB",
    )


# -- step 5: the GPU tier to zero and back while the bridge answers -----------------------


def dry_bridge(ctx: Ctx) -> None:
    path = gp.write_json(ctx.work / "bridge.yaml", gp.bridge_config(1000))
    validate_config(ctx, path)
    raise Skipped("the GPU tier's cold start needs an NVIDIA GPU (dry run)")


def real_bridge(ctx: Ctx) -> None:
    model = gp.PACKED[0]
    goal, why = gp.bridge_goal_ms(ctx.plan, model)
    if goal is None:
        raise Skipped(why)
    path = gp.write_json(ctx.work / "bridge.yaml", gp.bridge_config(goal))
    plan = _plan(ctx, path)
    tiers = [t["tier"] + ":" + t["role"] for t in gp._decision(plan, model)["tiers"]]
    ctx.step.figures.update({"goal_ms": round(goal), "tiers": tiers})
    ctx.check(
        tiers[:1] == ["llama-cuda:primary"] and "llama-cpu:bridge" in tiers,
        f"the plan puts a llama-cpu bridge before the llama-cuda primary: {tiers}",
    )
    with Serve(ctx, path, "bridge") as gw:
        ctx.check(gw.chat(model, ctx.left(120)) == 200, "the first request from zero answered")
        end, zero = time.monotonic() + ctx.left(60), False
        while time.monotonic() < end and not zero:
            reps = gw.models()[model]["replicas"]
            zero = reps["ready"] + reps["starting"] == 0
            time.sleep(0.5)
        ctx.check(zero, "the model scaled to zero")
        before = gw.models()[model]["bridge_served"]
        codes: list[int] = []
        start, back = time.monotonic(), None
        end = start + ctx.left(60)
        while time.monotonic() < end:
            codes.append(gw.chat(model, timeout=ctx.left(60)))
            inst = gw.models()[model]["instances"]
            if back is None and any(
                i["tier"] == "llama-cuda" and i["state"] == "ready" for i in inst
            ):
                back = time.monotonic() - start
            if back is not None and len(codes) >= 3:
                break
        served = gw.models()[model]["bridge_served"] - before
    failed = sum(1 for c in codes if c != 200)
    ctx.step.figures.update(
        {
            "requests": len(codes),
            "failed": failed,
            "bridge_served": served,
            "gpu_back_after_s": None if back is None else round(back, 2),
        }
    )
    ctx.check(failed == 0, f"no failed request while the GPU tier came back ({failed} failed)")
    ctx.check(served >= 1, f"the bridge answered {served} request(s) meanwhile")
    ctx.check(back is not None, "the llama-cuda replica is back")
