"""The ``wasm`` runtime: serves a WASM model package (``runtime.backends.wasm.package``)
over the same tasks as every other runtime, delegating to the package's ABI
(``runtime.backends.wasm.abi.base``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from runtime.backends.registry import LoadPhases, Runtime
from runtime.backends.wasm.abi.base import GuestAbi, abi_class
from runtime.backends.wasm.host import wasm_host
from runtime.backends.wasm.package import load_package
from runtime.backends.wasm.tracing import guest_call, traced_stream
from runtime.errors import ModelNotReady
from runtime.spec.model import ArtifactFormat, RuntimeName
from runtime.spec.types import (
    Embeddings,
    GenerateRequest,
    LoadReport,
    Tensor,
    TensorSpec,
    TokenChunk,
)

__all__ = ["WasmRuntime"]


class WasmRuntime(Runtime):
    name = RuntimeName.WASM

    _guest: GuestAbi | None = None

    async def load(self) -> LoadReport:
        self._guest = await asyncio.to_thread(self._load_blocking, asyncio.get_running_loop())
        return self.report

    def _load_blocking(self, loop: asyncio.AbstractEventLoop) -> GuestAbi:
        phases = LoadPhases(self.device)
        package = load_package(
            self.artifact(ArtifactFormat.WASM), settings=self.settings, model=self.spec.name
        )
        host = wasm_host(self.settings)
        phases.end("resolve")
        guest = abi_class(package.manifest.abi)(self.spec, package, host)
        guest.loop = loop
        guest.load(phases)
        self.report = phases.report()
        return guest

    async def unload(self) -> None:
        guest, self._guest = self._guest, None
        if guest is not None:
            await asyncio.to_thread(guest.close)

    def release_instances(self) -> int:
        """Scale to zero inside the process: drop the guest's idle instances, keep the
        compiled code and the weights (``GuestAbi.release_instances``)."""
        return self._guest.release_instances() if self._guest is not None else 0

    def live_instances(self) -> int:
        return self._guest.live_instances() if self._guest is not None else 0

    def parked_instances(self) -> int:
        return self._guest.parked_instances() if self._guest is not None else 0

    def _ready(self) -> GuestAbi:
        if self._guest is None:
            raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
        return self._guest

    @property
    def tokens_generated(self) -> int:
        return self._guest.tokens_generated() if self._guest is not None else 0

    def inputs(self) -> list[TensorSpec]:
        return self._ready().inputs()

    def outputs(self) -> list[TensorSpec]:
        return self._ready().outputs()

    # Each call into the guest in a span of the request's trace (wasm/tracing.py).
    def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:
        guest = self._ready()
        return traced_stream(self.spec.name, self._abi, guest.stream(request))

    async def embed(self, texts: list[str]) -> Embeddings:
        async with guest_call(self.spec.name, self._abi, "embed"):
            return await self._ready().embed(texts)

    async def infer(self, inputs: list[Tensor]) -> list[Tensor]:
        async with guest_call(self.spec.name, self._abi, "infer"):
            return await self._ready().infer(inputs)

    @property
    def _abi(self) -> str:
        return self._ready().package.manifest.abi.value
