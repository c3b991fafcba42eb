"""The runtime interface and the registry of runtimes.

A runtime loads one model and serves it: ``load`` / ``unload``, one method per task
(``stream`` for generation, ``embed``, ``infer`` for tensors), the memory it holds and
the phases its load took. Every method is async; blocking model calls run in the
runtime's own threads, never on the event loop.

Runtimes register by name and are imported lazily, so a host without llama.cpp or
CUDA still imports everything else.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

from runtime.backends.devices import cuda_available, resident_memory_bytes
from runtime.errors import BadInput, RuntimeUnavailable, UnsupportedTask
from runtime.settings import Settings
from runtime.spec.model import ArtifactFormat, ModelSpec, RuntimeName
from runtime.spec.placement import CUDA_CAPABLE, DEVICE_CHOICES, Device
from runtime.spec.types import (
    Embeddings,
    GenerateRequest,
    LoadReport,
    Tensor,
    TensorSpec,
    TokenChunk,
)

__all__ = [
    "LoadPhases",
    "Runtime",
    "check_batch",
    "create_runtime",
    "cuda_runtimes",
    "import_registered",
    "registered_runtimes",
    "resolve_device",
    "runtime_class",
]

_REGISTRY: dict[RuntimeName, str] = {
    RuntimeName.ONNX: "runtime.backends.onnx:OnnxRuntime",
    RuntimeName.LLAMA: "runtime.backends.llama:LlamaRuntime",
    RuntimeName.WASM: "runtime.backends.wasm.backend:WasmRuntime",
}


class LoadPhases:
    """Times the phases of one model load, back to back, and the resident memory it
    adds: ``end("resolve")``, ``end("load")``, ``end("warmup")``, then ``report()``."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._rss = resident_memory_bytes()
        self._mark = time.perf_counter()
        self._phases: dict[str, float] = {}

    def end(self, phase: str) -> None:
        now = time.perf_counter()
        self._phases[phase] = now - self._mark
        self._mark = now

    def report(self) -> LoadReport:
        added = max(0, resident_memory_bytes() - self._rss)
        return LoadReport(phases=self._phases, memory_bytes=added, device=self.device)


def check_batch(spec: ModelSpec, count: int, what: str) -> None:
    """400 when one request carries more ``what`` than the model's ``options.max_batch``."""
    limit = spec.options.max_batch
    if count > limit:
        raise BadInput(
            f"{count} {what} in one request; model {spec.name!r} takes at most "
            f"{limit} (options.max_batch)"
        )


class Runtime(ABC):
    """One loaded model on one device."""

    name: ClassVar[RuntimeName]
    #: What this runtime's ``stream`` honours beyond plain sampling: ``grammar``
    #: (constrained decoding) and ``logprobs``. A request asking for one it lacks is
    #: refused by :meth:`check_generation`, never served without it.
    generation_features: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: ModelSpec, *, device: Device, settings: Settings, base_dir: Path):
        self.spec = spec
        self.device = device
        self.settings = settings
        self.base_dir = base_dir
        self.report = LoadReport(device=device)
        self._generated = 0
        self._generated_lock = threading.Lock()

    def artifact(self, fmt: ArtifactFormat) -> Path:
        """The resolved file of one of the model's artifacts."""
        return self.spec.artifact_path(fmt, self.base_dir)

    @classmethod
    def supports_cuda(cls) -> bool:
        """Whether this build of the runtime's library can use a CUDA device (only the
        runtimes in ``runtime.spec.placement.CUDA_CAPABLE`` ever can)."""
        return False

    @abstractmethod
    async def load(self) -> LoadReport:
        """Load the model; returns the time each phase took and the memory added."""

    @abstractmethod
    async def unload(self) -> None:
        """Free the model. Calls in flight finish first."""

    @property
    def memory_bytes(self) -> int:
        """Resident memory the model added when it loaded."""
        return self.report.memory_bytes

    @property
    def tokens_generated(self) -> int:
        """Tokens generated since load, including by generations cut short."""
        return self._generated

    def _count_generated(self, n: int) -> None:
        with self._generated_lock:
            self._generated += n

    def inputs(self) -> list[TensorSpec]:
        """OIP v2 metadata: the tensors ``infer`` accepts."""
        return []

    def outputs(self) -> list[TensorSpec]:
        """OIP v2 metadata: the tensors ``infer`` returns."""
        return []

    def check_generation(self, request: GenerateRequest) -> None:
        """:class:`BadInput` if ``request`` asks for what this runtime cannot honour."""
        p = request.params
        wanted = {
            "grammar": (p.grammar is not None, "constrained decoding (response_format, tools)"),
            "logprobs": (p.top_logprobs is not None, "logprobs"),
        }
        for feature, (asked, what) in wanted.items():
            if asked and feature not in self.generation_features:
                raise BadInput(
                    f"model {self.spec.name!r} runs on the {self.name} runtime here, "
                    f"which does not support {what}"
                )

    def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:
        """Generate token by token. Closing the iterator stops the generation."""
        raise UnsupportedTask(f"model {self.spec.name!r} ({self.spec.task}) does not generate text")

    async def embed(self, texts: list[str]) -> Embeddings:
        raise UnsupportedTask(f"model {self.spec.name!r} ({self.spec.task}) has no embeddings")

    async def infer(self, inputs: list[Tensor]) -> list[Tensor]:
        raise UnsupportedTask(
            f"model {self.spec.name!r} ({self.spec.task}) does not take OIP v2 tensors"
        )


def registered_runtimes() -> frozenset[RuntimeName]:
    """The runtimes this build has an implementation of (importable or not)."""
    return frozenset(_REGISTRY)


def cuda_runtimes() -> frozenset[RuntimeName]:
    """The runtimes that can use this host's GPU with this build (none without a GPU;
    imports a runtime only where a GPU is present)."""
    if not cuda_available():
        return frozenset()
    found = set()
    for name in CUDA_CAPABLE & _REGISTRY.keys():
        try:
            if runtime_class(name).supports_cuda():
                found.add(name)
        except RuntimeUnavailable:
            continue
    return frozenset(found)


def import_registered(target: str | None, what: str) -> Any:
    """What a registry entry names as ``module:attribute``, imported on first use;
    RuntimeUnavailable naming ``what`` when this build has no entry or cannot import it."""
    if target is None:
        raise RuntimeUnavailable(f"{what} is not available in this build")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailable(f"{what} cannot be imported here: {exc}") from exc
    return getattr(module, attr)


def runtime_class(name: RuntimeName) -> type[Runtime]:
    """The implementation of a runtime, imported on first use."""
    cls: type[Runtime] = import_registered(_REGISTRY.get(name), f"runtime {name.value!r}")
    return cls


def resolve_device(requested: str, cls: type[Runtime]) -> Device:
    """``auto`` becomes ``cuda`` where a GPU is present and the runtime's build can use
    it, else ``cpu``; ``cuda`` on a host without one is an error, not a silent fallback."""
    if requested == "auto":
        return Device.CUDA if cuda_available() and cls.supports_cuda() else Device.CPU
    if requested not in DEVICE_CHOICES:
        raise RuntimeUnavailable(
            f"unknown device {requested!r}; allowed: {', '.join(DEVICE_CHOICES)}"
        )
    if requested == Device.CUDA and not cuda_available():
        raise RuntimeUnavailable("--device cuda was asked for, but this host has no CUDA device")
    return Device(requested)


def create_runtime(
    spec: ModelSpec,
    *,
    runtime: str = "auto",
    device: str = "auto",
    settings: Settings,
    base_dir: Path,
) -> Runtime:
    """Instantiate the runtime for a model. ``auto`` takes the first of the model's
    eligible runtimes that this host can import."""
    if runtime == "auto":
        errors = []
        for name in spec.runtimes:
            if name in _REGISTRY:
                try:
                    cls = runtime_class(name)
                    break
                except RuntimeUnavailable as exc:
                    errors.append(exc.message)
        else:
            raise RuntimeUnavailable(
                f"model {spec.name!r}: none of its runtimes {[r.value for r in spec.runtimes]} "
                f"can run here" + (f" ({'; '.join(errors)})" if errors else "")
            )
    else:
        try:
            chosen = RuntimeName(runtime)
        except ValueError:
            raise RuntimeUnavailable(
                f"unknown runtime {runtime!r}; allowed: {', '.join(r.value for r in RuntimeName)}"
            ) from None
        if chosen not in spec.runtimes:
            raise RuntimeUnavailable(
                f"model {spec.name!r} does not list runtime {runtime!r}; "
                f"its runtimes are {[r.value for r in spec.runtimes]}"
            )
        cls = runtime_class(chosen)
    return cls(spec, device=resolve_device(device, cls), settings=settings, base_dir=base_dir)
