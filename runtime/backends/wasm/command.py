"""``edgeinfer wasm run``: run one WASI command module, as WasmEdge's CLI does.

The guest's stdin, stdout and stderr are the process's own; the exit code is the
guest's. Failures of the sandbox get their own codes (:data:`EXIT_CODES`) and a message
on stderr: 124 deadline, 137 memory limit, 134 trap, 2 bad module or arguments.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runtime.backends.wasm.host import Sandbox, wasm_host
from runtime.backends.wasm.package import Preload
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn
from runtime.errors import (
    ConfigError,
    DeadlineExceeded,
    EdgeInferError,
    GuestLinkError,
    GuestOutOfMemory,
    GuestTrap,
)
from runtime.settings import Settings
from runtime.spec.artifacts import resolve_artifact

__all__ = ["EXIT_CODES", "RunOptions", "parse_dir", "run_module"]

EXIT_CODES: dict[type[EdgeInferError], int] = {
    DeadlineExceeded: 124,
    GuestOutOfMemory: 137,
    GuestTrap: 134,
    GuestLinkError: 2,
    ConfigError: 2,
}


@dataclass
class RunOptions:
    module: Path
    args: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # HOST:GUEST[:readonly], or PATH
    env: list[str] = field(default_factory=list)  # K=V
    nn_preload: list[str] = field(default_factory=list)  # NAME:ENCODING:TARGET:PATH
    timeout_s: float | None = None
    max_memory_mib: int | None = None


def parse_dir(spec: str) -> tuple[Path, str, bool]:
    """``HOST:GUEST[:readonly]`` or ``PATH`` (the same path on both sides)."""
    parts = spec.split(":")
    readonly = len(parts) > 1 and parts[-1] == "readonly"
    if readonly:
        parts = parts[:-1]
    if len(parts) == 1:
        host, guest = parts[0], parts[0]
    elif len(parts) == 2:
        host, guest = parts
    else:
        raise ConfigError(f"--dir {spec!r}: expected HOST:GUEST[:readonly] or PATH")
    path = Path(host).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--dir {spec!r}: {path} is not a directory")
    return path, guest, readonly


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def run_module(opts: RunOptions, settings: Settings) -> int:
    """Run the module; returns the exit code the process should exit with."""
    try:
        return _run(opts, settings)
    except EdgeInferError as exc:
        print(f"edgeinfer wasm: error: {exc.message}", file=sys.stderr, flush=True)
        for cls, code in EXIT_CODES.items():
            if isinstance(exc, cls):
                return code
        return 1


def _preload_path(preload: Preload) -> Path:
    """The file a preload names. One that does not exist is not an error here: as in
    WasmEdge, the guest gets ModelNotFound when it loads that model."""
    try:
        return resolve_artifact(preload.path, Path.cwd(), model=preload.name, field="--nn-preload")
    except ConfigError:
        return Path(preload.path)


def _run(opts: RunOptions, settings: Settings) -> int:
    if not opts.module.is_file():
        raise ConfigError(f"{opts.module}: no such module file")
    preloads = []
    for text in opts.nn_preload:
        try:
            preloads.append(Preload.parse(text))
        except ValueError as exc:
            raise ConfigError(f"--nn-preload: {exc}") from None
    paths = {p.name: _preload_path(p) for p in preloads}
    mounts: list[tuple[Path, str]] = []
    writable: list[tuple[Path, str]] = []
    for spec in opts.dirs:
        host_dir, guest_dir, readonly = parse_dir(spec)
        (mounts if readonly else writable).append((host_dir, guest_dir))
    host = wasm_host(settings)
    nn = NnHost(preloads, paths)
    try:
        template = host.template(host.module(opts.module), define_wasi_nn)
        sandbox = Sandbox(
            args=opts.args,
            env=_env(opts.env),
            mounts=mounts,
            writable_mounts=writable,
            timeout_s=opts.timeout_s if opts.timeout_s is not None else math.inf,
            max_memory_bytes=(opts.max_memory_mib << 20) if opts.max_memory_mib else 4 << 30,
            inherit_stdio=True,
            program=opts.module.name,
        )
        sys.stdout.flush()
        state = NnCall(nn)
        try:
            return template.run(sandbox, state).exit_code
        finally:
            state.close()
    finally:
        nn.close()
