"""The ``llama`` runtime: GGUF models under llama-cpp-python, on CPU or with CUDA offload.

With ``options.parallel`` above 1, the sequences share one llama.cpp context and
are decoded together, a new request joining at the next step
(``runtime.backends.llama_batch``: continuous batching). With ``parallel: 1`` one
``Llama`` serves one request at a time through its own generate loop (and
``options.prompt_cache`` can keep the KV cache of a shared prefix).

Either way the generation runs in a thread and hands tokens to the event loop one by
one; closing the stream sets a flag that the thread checks after every token, so a
client that goes away stops the work within one token.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from runtime.backends.llama_batch import BatchEngine, BatchJob
from runtime.backends.llama_decode import decode
from runtime.backends.registry import LoadPhases, Runtime
from runtime.errors import (
    BadInput,
    ConfigError,
    ContextOverflow,
    EdgeInferError,
    ModelNotReady,
    RuntimeFailure,
    RuntimeUnavailable,
    UnsupportedTask,
)
from runtime.spec.model import ArtifactFormat, RuntimeName
from runtime.spec.placement import Device
from runtime.spec.types import GenerateRequest, LoadReport, SamplingParams, TokenChunk

__all__ = ["LlamaRuntime", "gguf_chat_template"]

_DONE = object()
# No token of a vocabulary the project has met spans more bytes than this (SmolLM2's
# and Gemma 3's longest: 32 and 31 bytes), so a prompt of more characters than
# n_ctx * this cannot fit the context: refused before tokenising, which runs on the
# event loop (a 5 MB prompt took 3.5 s, long enough to miss liveness probes).
MAX_BYTES_PER_TOKEN = 128


class LlamaRuntime(Runtime):
    name = RuntimeName.LLAMA
    generation_features = frozenset({"grammar", "logprobs"})

    _instances: asyncio.Queue[Llama] | None = None
    _all: list[Llama]
    _pool: ThreadPoolExecutor | None = None
    _formatter: Jinja2ChatFormatter | None = None
    _n_ctx: int = 0
    _engine: BatchEngine | None = None

    @classmethod
    def supports_cuda(cls) -> bool:
        return bool(llama_cpp.llama_supports_gpu_offload())

    async def load(self) -> LoadReport:
        if self.device == Device.CUDA and not self.supports_cuda():
            raise RuntimeUnavailable(
                "device cuda asked for, but this llama-cpp-python build has no GPU offload "
                "(build it with CMAKE_ARGS=-DGGML_CUDA=on)"
            )
        opts = self.spec.options
        if opts.parallel > 1 and opts.prompt_cache:
            raise ConfigError(
                f"model {self.spec.name!r}: options.prompt_cache needs options.parallel 1 "
                "(with more, the sequences share one context and each starts clean)"
            )
        self._pool = ThreadPoolExecutor(
            max_workers=1 if opts.parallel > 1 else opts.parallel,
            thread_name_prefix=f"llama-{self.spec.name}",
        )
        loop = asyncio.get_running_loop()
        load = self._load_batched if opts.parallel > 1 else self._load_blocking
        instances = await loop.run_in_executor(self._pool, load)
        self._all = instances
        self._instances = asyncio.Queue()
        for llm in instances:
            self._instances.put_nowait(llm)
        return self.report

    def _load_blocking(self) -> list[Llama]:
        opts = self.spec.options
        phases = LoadPhases(self.device)
        path = self.artifact(ArtifactFormat.GGUF)
        phases.end("resolve")
        threads = self.settings.threads(opts.threads)
        instances = [
            Llama(
                model_path=str(path),
                n_ctx=opts.context_length,
                n_batch=min(opts.batch_size, opts.context_length),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=opts.gpu_layers if self.device == Device.CUDA else 0,
                use_mmap=True,
                verbose=False,
            )
            for _ in range(opts.parallel)
        ]
        phases.end("load")
        first = instances[0]
        self._n_ctx = first.n_ctx()
        self._formatter = _chat_formatter(first)
        for llm in instances:  # one token through each context: allocates its buffers
            llm.create_completion(" ", max_tokens=1, temperature=0.0)
            llm.reset()
        phases.end("warmup")
        self.report = phases.report()
        return instances

    def _load_batched(self) -> list[Llama]:
        """One ``Llama`` for the weights and the tokenizer (its own context kept
        small), and a :class:`BatchEngine` with ``parallel`` sequences."""
        opts = self.spec.options
        phases = LoadPhases(self.device)
        path = self.artifact(ArtifactFormat.GGUF)
        phases.end("resolve")
        threads = self.settings.threads(opts.threads)
        llm = Llama(
            model_path=str(path),
            n_ctx=64,
            n_batch=64,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=opts.gpu_layers if self.device == Device.CUDA else 0,
            use_mmap=True,
            verbose=False,
        )
        self._engine = BatchEngine(
            llm,
            parallel=opts.parallel,
            context_length=opts.context_length,
            n_batch=min(opts.batch_size, opts.context_length),
            counted=self._count_generated,
            name=self.spec.name,
        )
        phases.end("load")
        self._n_ctx = self._engine.n_ctx_seq
        self._formatter = _chat_formatter(llm)
        # One token through the context allocates its buffers.
        ended: list[Any] = []
        warm = threading.Event()

        def warm_emit(item: Any) -> None:
            if item is _DONE or isinstance(item, BaseException):
                ended.append(item)
                warm.set()

        job = BatchJob(
            [llm.token_bos()],
            1,
            SamplingParams(temperature=0.0),
            [],
            0,
            threading.Event(),
            warm_emit,
            _DONE,
        )
        self._engine.submit(job)
        warm.wait()
        if isinstance(ended[0], BaseException):
            raise ended[0]
        phases.end("warmup")
        self.report = phases.report()
        return [llm]

    async def unload(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)
            for llm in self._all:
                llm.close()
            self._all = []
        if self._instances is not None:
            # Take every instance back: waits for generations in flight to finish.
            for _ in self._all:
                llm = await self._instances.get()
                llm.close()
        self._instances = None
        self._all = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:  # type: ignore[override]
        if self._engine is not None:
            async for chunk in self._stream_batched(self._engine, request):
                yield chunk
            return
        if self._instances is None or self._pool is None:
            raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
        llm = await self._instances.get()
        cancel = threading.Event()
        future: Future[None] | None = None
        try:
            tokens, extra_stop = self._prompt_tokens(llm, request)
            max_tokens = self._check_budget(len(tokens), request.params.max_tokens)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()

            def emit(item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            future = self._pool.submit(
                self._generate, llm, tokens, max_tokens, extra_stop, request, cancel, emit
            )
            async for item in _emitted(queue):
                yield item
        finally:
            # No await here: this runs while the request's task is being cancelled.
            cancel.set()
            self._release_when_done(llm, future)

    async def _stream_batched(
        self, engine: BatchEngine, request: GenerateRequest
    ) -> AsyncGenerator[TokenChunk, None]:
        tokens, extra_stop = self._prompt_tokens(engine.llm, request)
        max_tokens = self._check_budget(len(tokens), request.params.max_tokens)
        p = request.params
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        seed = p.seed if p.seed is not None else random.getrandbits(31)
        engine.submit(
            BatchJob(tokens, max_tokens, p, [*p.stop, *extra_stop], seed, cancel, emit, _DONE)
        )
        try:
            async for item in _emitted(queue):
                yield item
        finally:
            cancel.set()  # the engine drops the sequence at its next step

    def _release_when_done(self, llm: Llama, future: Future[None] | None) -> None:
        """Return ``llm`` to the pool once its thread is done with it, never earlier."""
        instances = self._instances
        if instances is None:
            return
        if future is None:
            instances.put_nowait(llm)
            return
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(instances.put_nowait, llm))

    def _check_prompt_size(self, request: GenerateRequest) -> None:
        """The cheap bound before tokenising: characters (each at least one byte) over
        n_ctx * MAX_BYTES_PER_TOKEN are more tokens than the context holds."""
        if request.messages is not None:
            chars = sum(len(m.content) for m in request.messages)
        else:
            chars = len(request.prompt or "")
        limit = self._n_ctx * MAX_BYTES_PER_TOKEN
        if chars > limit:
            raise ContextOverflow(
                f"the prompt is {chars} characters; model {self.spec.name!r} has a context "
                f"of {self._n_ctx} tokens, which never hold more than {limit} characters. "
                "Shorten the prompt."
            )

    def _prompt_tokens(self, llm: Llama, request: GenerateRequest) -> tuple[list[int], list[str]]:
        self._check_prompt_size(request)
        if request.messages is not None:
            if self._formatter is None:
                raise UnsupportedTask(
                    f"model {self.spec.name!r} has no chat template; use /v1/completions"
                )
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                formatted = self._formatter(messages=cast(Any, messages))
            except Exception as exc:  # jinja2 errors from the model's own template
                raise BadInput(f"the model's chat template rejected the messages: {exc}") from exc
            tokens = llm.tokenize(
                formatted.prompt.encode("utf-8"),
                add_bos=not formatted.added_special,
                special=True,
            )
            stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop or ""]
            return tokens, [s for s in stop if s]
        assert request.prompt is not None
        return llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=False), []

    def _check_budget(self, n_prompt: int, max_tokens: int | None) -> int:
        n_ctx = self._n_ctx
        if n_prompt >= n_ctx:
            raise ContextOverflow(
                f"the prompt is {n_prompt} tokens; model {self.spec.name!r} has a context of "
                f"{n_ctx} tokens. Shorten the prompt."
            )
        if max_tokens is None:
            return n_ctx - n_prompt
        if n_prompt + max_tokens > n_ctx:
            raise ContextOverflow(
                f"model {self.spec.name!r} has a context of {n_ctx} tokens; you asked for "
                f"{n_prompt + max_tokens} ({n_prompt} in the prompt, {max_tokens} in "
                f"max_tokens). Lower max_tokens to at most {n_ctx - n_prompt}."
            )
        return max_tokens

    def _generate(
        self,
        llm: Llama,
        tokens: list[int],
        max_tokens: int,
        extra_stop: list[str],
        request: GenerateRequest,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        """Runs in a pool thread. Emits TokenChunks, then an exception or _DONE."""
        p = request.params
        seed = p.seed if p.seed is not None else random.getrandbits(31)
        try:
            # Without a reset llama-cpp-python keeps the KV cache of the longest prefix
            # shared with this instance's previous request. A token evaluated alone gets
            # logits that differ in the last bits from the same token in a batch, so that
            # can change the answer: only with options.prompt_cache, and never with a seed.
            if not self.spec.options.prompt_cache or p.seed is not None:
                llm.reset()
            stops = [*p.stop, *extra_stop]
            finish, used = decode(llm, tokens, max_tokens, p, stops, seed, cancel, emit)
            self._count_generated(used)
            emit(TokenChunk("", finish, prompt_tokens=len(tokens), completion_tokens=used))
            emit(_DONE)
        except EdgeInferError as exc:
            emit(exc)
        except Exception as exc:
            emit(RuntimeFailure(f"llama.cpp failed on model {self.spec.name!r}: {exc}"))


def gguf_chat_template(llm: Llama) -> tuple[str, str, str] | None:
    """(template, bos, eos): the model's own chat template (GGUF
    ``tokenizer.chat_template``) and the texts of its BOS/EOS tokens, if it has one."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    eos = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
    bos = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    return template, bos, eos


def _chat_formatter(llm: Llama) -> Jinja2ChatFormatter | None:
    found = gguf_chat_template(llm)
    if found is None:
        return None
    template, bos, eos = found
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


async def _emitted(queue: asyncio.Queue[Any]) -> AsyncGenerator[TokenChunk, None]:
    """What a decoding thread puts on ``queue``, until it puts ``_DONE``; an exception
    it puts is raised here."""
    while True:
        item = await queue.get()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
