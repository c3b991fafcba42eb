"""The guest ABIs a WASM model package can declare, and the registry that finds them.

An ABI knows how to run one kind of guest for the worker: which imports to link,
how a request becomes a guest call, how the guest's answer becomes a response. The
``wasm`` runtime (``runtime.backends.wasm.backend``) reads the package manifest, looks its
``abi`` up here and delegates every task to the :class:`GuestAbi` it builds.

Adding an ABI: add a value to :class:`runtime.backends.wasm.package.Abi`, write a subclass of
:class:`GuestAbi` in its own module, and add one line to ``_ABIS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from runtime.backends.registry import LoadPhases, import_registered
from runtime.backends.wasm.host import WasmHost
from runtime.backends.wasm.package import Abi, Package
from runtime.errors import UnsupportedTask
from runtime.spec.model import ModelSpec
from runtime.spec.types import Embeddings, GenerateRequest, Tensor, TensorSpec, TokenChunk

__all__ = ["GuestAbi", "abi_class"]

_ABIS: dict[Abi, str] = {
    Abi.WASI_NN: "runtime.backends.wasm.abi.wasi_nn:WasiNnGuest",
    Abi.SPIN_LLM: "runtime.backends.wasm.abi.spin:SpinGuest",
    Abi.COMPUTE: "runtime.backends.wasm.abi.compute:ComputeGuest",
}


class GuestAbi:
    """One package's guest, ready to serve the model's task.

    ``load`` runs once in a worker thread (compile or deserialize the guest, link it,
    load what the host preloads), timing its phases on ``phases``; the task methods are
    async and run guest calls in ``runtime.backends.wasm.pool``'s threads. ``loop`` is the
    worker's event loop (set before ``load``), for host functions that must call async
    runtimes from a guest thread.
    """

    loop: asyncio.AbstractEventLoop

    def __init__(self, spec: ModelSpec, package: Package, host: WasmHost) -> None:
        self.spec = spec
        self.package = package
        self.host = host

    def load(self, phases: LoadPhases) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free what ``load`` took. Calls in flight have finished."""

    def release_instances(self) -> int:
        """Drop the guest's idle instances, keeping what makes new ones cheap (compiled
        code, snapshot, host-side state); how many were dropped. A guest that keeps no
        instances between calls drops none."""
        return 0

    def live_instances(self) -> int:
        """Instances held now (idle or busy); 0 for a guest with a store per call."""
        return 0

    def parked_instances(self) -> int:
        """Instances kept after a release in the snapshot's state (no request's data,
        no private pages), not counted in :meth:`live_instances`."""
        return 0

    def inputs(self) -> list[TensorSpec]:
        return []

    def outputs(self) -> list[TensorSpec]:
        return []

    def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:
        raise UnsupportedTask(
            f"model {self.spec.name!r}: its {self.package.manifest.abi.value} guest does not "
            "generate text"
        )

    async def embed(self, texts: list[str]) -> Embeddings:
        raise UnsupportedTask(
            f"model {self.spec.name!r}: its {self.package.manifest.abi.value} guest has no "
            "embeddings"
        )

    async def infer(self, inputs: list[Tensor]) -> list[Tensor]:
        raise UnsupportedTask(
            f"model {self.spec.name!r}: its {self.package.manifest.abi.value} guest does not "
            "take OIP v2 tensors"
        )

    def tokens_generated(self) -> int:
        return 0


def abi_class(abi: Abi) -> type[GuestAbi]:
    cls: type[GuestAbi] = import_registered(_ABIS.get(abi), f"WASM ABI {abi.value!r}")
    return cls
