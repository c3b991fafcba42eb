"""Latency profiles: how fast each runtime x device really is on one model.

A :class:`Profile` holds what ``edgeinfer profile`` measured for one (model, runtime,
device): the cold start split into phases, warm latency p50/p95 at concurrency 1 and at
the model's target concurrency, tokens/s for generation, and memory. Profiles are
stored under the state folder, one JSON file per (model, runtime, device, artifact
hash), so a changed artifact (a new GGUF, a re-exported ONNX) is measured again and an
unchanged one never is.

When the inventory offers a device no profile was measured on (planning for a GPU site
from a CPU laptop), :func:`estimate_cuda` derives a profile from the CPU one with
stated factors; such a profile says ``source="estimated"`` and the plan shows it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from pydantic import Field, ValidationError

from runtime.spec.artifacts import resolve_artifact
from runtime.spec.frozen import Frozen
from runtime.spec.model import RUNTIME_FORMATS, ModelSpec, RuntimeName
from runtime.spec.placement import Device

__all__ = [
    "LoadPoint",
    "Profile",
    "ProfileStore",
    "artifact_hash",
    "estimate_cuda",
]


class LoadPoint(Frozen):
    """Warm latency at one concurrency (requests kept in flight at once)."""

    concurrency: int = Field(ge=1)
    requests: int = Field(ge=1)
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    throughput_rps: float = Field(gt=0, description="completed requests per second")
    tokens_per_s: float | None = Field(
        None, description="generation: tokens per second seen by one request"
    )


class Profile(Frozen):
    model: str
    runtime: RuntimeName
    device: Device
    artifact_hash: str
    source: str = Field("measured", pattern="^(measured|estimated)$")
    note: str = ""
    host: str = ""
    measured_at: float = 0.0
    workload: str = ""
    cold_start: dict[str, float] = Field(default_factory=dict, description="phase -> seconds")
    first_start_s: float | None = Field(
        None,
        ge=0,
        description="the first start on the measuring host, which may build caches (an ONNX "
        "graph, a compiled WASM module); the policy plans with ``cold_start``, a later start",
    )
    points: tuple[LoadPoint, ...] = Field(min_length=1)
    memory_mib: float = Field(0.0, ge=0, description="memory the model added on load")
    rss_mib: float = Field(0.0, ge=0, description="peak resident memory of the worker")
    cpu_cores: float = Field(
        0.0, ge=0, description="cores the measured replica computed on (0: not recorded)"
    )
    gpu_memory_mib: float | None = None

    @property
    def key(self) -> str:
        return f"{self.runtime.value}-{self.device}"

    @property
    def cold_start_s(self) -> float:
        return sum(self.cold_start.values())

    @property
    def service_ms(self) -> float:
        """Median warm latency of one request alone."""
        return self.points[0].p50_ms

    @property
    def tokens_per_s(self) -> float | None:
        return self.points[0].tokens_per_s

    def p95_at(self, concurrency: float) -> float:
        """Warm p95 with ``concurrency`` requests in flight on one replica, linear
        between the measured points and beyond the last one."""
        pts = sorted(self.points, key=lambda p: p.concurrency)
        if concurrency <= pts[0].concurrency or len(pts) == 1:
            scale = max(1.0, concurrency / pts[0].concurrency) if len(pts) == 1 else 1.0
            return pts[0].p95_ms * scale
        for lo, hi in itertools.pairwise(pts):
            if concurrency <= hi.concurrency:
                f = (concurrency - lo.concurrency) / (hi.concurrency - lo.concurrency)
                return lo.p95_ms + f * (hi.p95_ms - lo.p95_ms)
        lo, hi = pts[-2], pts[-1]
        slope = (hi.p95_ms - lo.p95_ms) / (hi.concurrency - lo.concurrency)
        return hi.p95_ms + max(slope, 0.0) * (concurrency - hi.concurrency)

    @property
    def max_throughput_rps(self) -> float:
        """The most requests per second one replica completed at any measured load."""
        return max(p.throughput_rps for p in self.points)

    @property
    def parallelism(self) -> float:
        """How many requests one replica effectively serves at once (throughput gained
        over serving them one by one), at least 1."""
        return max(1.0, self.max_throughput_rps * self.service_ms / 1000.0)


def estimate_cuda(cpu: Profile, *, speedup: float, init_s: float, gpu_memory_mib: float) -> Profile:
    """A CUDA profile derived from a measured CPU one: latency and cold-start load
    divided by ``speedup``, plus ``init_s`` of CUDA context start-up. An estimate,
    marked so; a measured CUDA profile always replaces it."""
    points = tuple(
        LoadPoint(
            concurrency=p.concurrency,
            requests=p.requests,
            p50_ms=p.p50_ms / speedup,
            p95_ms=p.p95_ms / speedup,
            throughput_rps=p.throughput_rps * speedup,
            tokens_per_s=None if p.tokens_per_s is None else p.tokens_per_s * speedup,
        )
        for p in cpu.points
    )
    cold = dict(cpu.cold_start)
    cold["load"] = cold.get("load", 0.0) + init_s
    return cpu.model_copy(
        update={
            "device": Device.CUDA,
            "source": "estimated",
            "note": f"estimated from the {cpu.key} profile: {speedup:g}x faster, "
            f"+{init_s:g}s CUDA start-up",
            "points": points,
            "cold_start": cold,
            "gpu_memory_mib": gpu_memory_mib,
        }
    )


def artifact_hash(spec: ModelSpec, runtime: RuntimeName, base_dir: Path, cache_dir: Path) -> str:
    """sha256 over the files ``runtime`` loads for this model (its artifact and the
    tokenizer). Hashes are cached by (path, size, mtime), so an unchanged 250 MB GGUF
    is read once."""
    refs = [spec.artifacts[f] for f in RUNTIME_FORMATS[runtime] if f in spec.artifacts]
    if spec.tokenizer:
        refs.append(spec.tokenizer)
    cache_file = cache_dir / "hashes.json"
    try:
        cache: dict[str, str] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256()
    paths = [resolve_artifact(r, base_dir, model=spec.name, field="artifacts") for r in refs]
    for path in (f for p in paths for f in _artifact_files(p, spec.name)):
        stat = path.stat()
        key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = cache[key] = h.hexdigest()
        total.update(digest.encode())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=0))
    tmp.replace(cache_file)
    return total.hexdigest()


def _artifact_files(path: Path, model: str) -> list[Path]:
    """The files behind one artifact: the file itself; for a WASM package folder, its
    files, the model files its manifest names and the sources of a guest it builds."""
    if not path.is_dir():
        return [path]
    from runtime.backends.wasm.build import GuestSource
    from runtime.backends.wasm.package import MANIFEST_NAME, read_manifest

    _, manifest = read_manifest(path, model=model)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for ref in [*manifest.files.values(), *(p.path for p in manifest.preloads)]:
        files.append(resolve_artifact(ref, path, model=model, field=MANIFEST_NAME))
    if manifest.guest.startswith("build:"):
        files += GuestSource.read(manifest.guest.removeprefix("build:")).inputs()
    return files


class ProfileStore:
    """Profiles under ``<state>/profiles/<model>/<runtime>-<device>-<hash>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, model: str, runtime: RuntimeName, device: str, digest: str) -> Path:
        return self.root / model / f"{runtime.value}-{device}-{digest[:16]}.json"

    def get(self, model: str, runtime: RuntimeName, device: str, digest: str) -> Profile | None:
        path = self._path(model, runtime, device, digest)
        try:
            profile = Profile.model_validate_json(path.read_text())
        except (OSError, ValidationError):
            return None  # absent or from an older schema: measure again
        return profile if profile.artifact_hash == digest else None

    def put(self, profile: Profile) -> Path:
        path = self._path(profile.model, profile.runtime, profile.device, profile.artifact_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(profile.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    def for_model(
        self, spec: ModelSpec, base_dir: Path, *, hashes: dict[RuntimeName, str] | None = None
    ) -> tuple[Profile, ...]:
        """The stored profiles that match the model's current artifacts, for every
        runtime it lists (stale ones, of changed artifacts, are left out)."""
        found = []
        for runtime in spec.runtimes:
            try:
                digest = (hashes or {}).get(runtime) or artifact_hash(
                    spec, runtime, base_dir, self.root
                )
            except Exception:  # an artifact that cannot be resolved here has no profile
                continue
            for device in Device:
                profile = self.get(spec.name, runtime, device, digest)
                if profile is not None:
                    found.append(profile)
        return tuple(found)
