"""Builds the WebAssembly guests in ``wasm-modules/`` (nothing prebuilt is committed).

Each guest is a folder ``wasm-modules/<guest>/`` with a ``guest.toml``::

    kind = "c"                       # C sources, compiled by zig (the ``ziglang`` package)
    sources = ["main.c"]             # default: every *.c in the folder
    cflags = ["-DFOO=1"]             # added to the common flags below
    ldflags = []

    kind = "componentize-py"         # a Python component (Spin guests)
    world = "pkg:name/world@1.0.0"   # WIT world, in the folder's wit/
    module = "app"                   # the Python module that implements the world
    module_worlds = ["spin_sdk=fermyon:spin/platform@2.0.0"]   # SDK modules' worlds
    intersect_world = "pkg:name/host-world@1.0.0"  # keep only these imports

C guests compile with ``zig cc --target=wasm32-wasi -O3 -msimd128`` plus the guest's own
flags; ``wasm-modules/include/`` is on the include path. The output is cached in the
state folder under a hash of every file of the guest (and ``include/``), the flags and
the compiler's version, so a second build of unchanged sources costs a hash.

``python -m runtime.backends.wasm.build [GUEST...]`` builds guests (all when none are named)
and prints their paths.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

from runtime.errors import ConfigError, RuntimeFailure
from runtime.settings import Settings

__all__ = ["COMMON_CFLAGS", "GuestSource", "build_guest", "guest_names", "guests_dir"]

COMMON_CFLAGS = ("--target=wasm32-wasi", "-O3", "-msimd128", "-g0", "-Wall", "-Werror")
COMMON_LDFLAGS = ("-Wl,--strip-all",)


def guests_dir() -> Path:
    """``wasm-modules/`` of this checkout."""
    return Path(__file__).resolve().parents[3] / "wasm-modules"


@dataclass(frozen=True)
class GuestSource:
    """A guest's folder and its ``guest.toml``."""

    name: str
    folder: Path
    kind: str = "c"
    sources: tuple[str, ...] = ()
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    world: str | None = None
    module: str | None = None
    module_worlds: tuple[str, ...] = ()
    intersect_world: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def read(cls, name: str, root: Path | None = None) -> GuestSource:
        folder = (root or guests_dir()) / name
        manifest = folder / "guest.toml"
        if not manifest.is_file():
            known = ", ".join(guest_names(root)) or "none"
            raise ConfigError(f"no WASM guest {name!r} ({manifest} is missing); known: {known}")
        try:
            raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{manifest}: not valid TOML: {exc}") from exc
        kind = str(raw.pop("kind", "c"))
        if kind not in ("c", "componentize-py"):
            raise ConfigError(f"{manifest}: kind {kind!r}; allowed: 'c', 'componentize-py'")
        sources = tuple(raw.pop("sources", ()))
        if kind == "c" and not sources:
            sources = tuple(sorted(p.name for p in folder.glob("*.c")))
        return cls(
            name=name,
            folder=folder,
            kind=kind,
            sources=sources,
            cflags=tuple(raw.pop("cflags", ())),
            ldflags=tuple(raw.pop("ldflags", ())),
            world=raw.pop("world", None),
            module=raw.pop("module", None),
            module_worlds=tuple(raw.pop("module_worlds", ())),
            intersect_world=raw.pop("intersect_world", None),
            extra=raw,
        )

    def inputs(self) -> list[Path]:
        """Every file whose content decides the build's output."""
        folders = [self.folder]
        include = self.folder.parent / "include"
        if include.is_dir():
            folders.append(include)
        files: list[Path] = []
        for folder in folders:
            files += [
                p
                for p in folder.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            ]
        return sorted(files)


def guest_names(root: Path | None = None) -> list[str]:
    base = root or guests_dir()
    return sorted(p.parent.name for p in base.glob("*/guest.toml"))


@cache
def _tool_version(kind: str) -> str:
    if kind == "c":  # the ziglang wheel's version is zig's own version
        return f"zig {metadata.version('ziglang')}"
    return f"componentize-py {metadata.version('componentize-py')}, spin-sdk {_spin_sdk_version()}"


def _spin_sdk_version() -> str:
    try:
        return metadata.version("spin-sdk")
    except metadata.PackageNotFoundError:
        return "absent"


def _key(guest: GuestSource) -> str:
    h = hashlib.sha256()
    h.update(f"{guest.kind}\0{_tool_version(guest.kind)}\0".encode())
    for flag in (*COMMON_CFLAGS, *COMMON_LDFLAGS, *guest.cflags, *guest.ldflags):
        h.update(flag.encode() + b"\0")
    h.update(f"{guest.world}\0{guest.module}\0{guest.sources}\0".encode())
    h.update(f"{guest.module_worlds}\0{guest.intersect_world}\0".encode())
    root = guest.folder.parent
    for path in guest.inputs():
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:20]


def build_guest(name: str, settings: Settings, *, root: Path | None = None) -> Path:
    """The built ``.wasm`` of guest ``name``: from the cache, or built now.

    Concurrent builders of the same guest (test workers, replicas) wait on a file lock
    and then find the cached result; a failed build raises :class:`RuntimeFailure`
    carrying the compiler's output.
    """
    guest = GuestSource.read(name, root)
    out_dir = settings.state_dir / "wasm" / "guests"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{_key(guest)}.wasm"
    if target.is_file():
        return target
    with (out_dir / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        try:
            if guest.kind == "c":
                _build_c(guest, tmp)
            else:
                _build_componentize_py(guest, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _run(cmd: list[str], guest: GuestSource, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeFailure(
            f"building WASM guest {guest.name!r} failed ({' '.join(cmd[:4])} ...):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )


def _build_c(guest: GuestSource, out: Path) -> None:
    include = guest.folder.parent / "include"
    cmd = [sys.executable, "-m", "ziglang", "cc", *COMMON_CFLAGS, *guest.cflags]
    if include.is_dir():
        cmd.append(f"-I{include}")
    cmd += [*guest.sources, *COMMON_LDFLAGS, *guest.ldflags, "-o", str(out)]
    _run(cmd, guest, guest.folder)


def _build_componentize_py(guest: GuestSource, out: Path) -> None:
    if not guest.world or not guest.module:
        raise ConfigError(f"guest {guest.name!r}: a componentize-py guest needs world and module")
    # The console script of the componentize-py installed beside this interpreter; its
    # SDK packages (spin_sdk) are found through the site-packages passed with -p.
    tool = Path(sys.executable).parent / "componentize-py"
    if not tool.is_file():
        raise RuntimeFailure(f"componentize-py is not installed beside {sys.executable}")
    cmd = [str(tool), "-d", str(guest.folder / "wit"), "-w", guest.world, "componentize"]
    cmd += [guest.module, "-p", str(guest.folder)]
    for entry in guest.module_worlds:
        package = entry.partition("=")[0]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeFailure(f"guest {guest.name!r} needs the {package!r} package")
        cmd += ["-p", str(Path(next(iter(spec.submodule_search_locations))).parent)]
        cmd += ["-m", entry]
    if guest.intersect_world:
        cmd += ["-i", guest.intersect_world]
    cmd += ["-o", str(out)]
    _run(cmd, guest, guest.folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.backends.wasm.build", description=__doc__
    )
    parser.add_argument("guests", nargs="*", help="guest folders in wasm-modules/ (default: all)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    for name in args.guests or guest_names():
        print(f"{name}\t{build_guest(name, settings)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
