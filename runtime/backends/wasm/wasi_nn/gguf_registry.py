"""The GGUF files a process has loaded, each once: wasi-nn GGML guests share weights.

WasmEdge names a preloaded model ``--nn-preload alias:GGML:AUTO:path``; every guest
instance naming the alias gets its own execution context over one copy of the
weights. Here the same holds across models: a :class:`GgufRegistry` keys each loaded
file by its resolved path and the settings that change the loaded weights (GPU
layers offloaded), so two models (two packages, two aliases) naming one GGUF load it
once, and each execution context is a fresh llama.cpp context (KV cache, sampler,
batch) over the shared ``llama_model``.

llama-cpp-python builds a model and a context together in ``Llama.__init__``; a
second context over a loaded model is made here from the first ``Llama`` by
:func:`_context_over`, which gives the copy its own context, batch and buffers and
keeps the model's (pinned: llama-cpp-python 0.3.x attribute names; the tests check a
shared context answers exactly as a freshly loaded one does).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp import _internals as internals

__all__ = ["ContextSettings", "GgufEntry", "GgufRegistry", "SharedGguf", "gguf_registry"]

# A llama.cpp context needs a few tokens of room; the template context is only the
# holder of the model and never serves.
_TEMPLATE_CTX = 64


@dataclass(frozen=True)
class ContextSettings:
    """What one execution context is made with (the weights are not among them)."""

    n_ctx: int
    n_batch: int
    threads: int
    embedding: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class GgufEntry:
    """One loaded GGUF as :meth:`GgufRegistry.entries` shows it, named as WasmEdge's
    ``--nn-preload`` would (the aliases that named it, GGML, the target, the path)."""

    preload: str
    holders: int
    contexts: int


@dataclass
class SharedGguf:
    """One GGUF loaded once: the template ``Llama`` that owns the ``llama_model``, and
    the contexts made over it. Handed out by :meth:`GgufRegistry.acquire`; each holder
    gives it back with :meth:`GgufRegistry.release`."""

    path: Path
    n_gpu_layers: int
    template: Llama
    aliases: set[str] = field(default_factory=set)
    holders: int = 0
    contexts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def context(self, settings: ContextSettings) -> Llama:
        """A new execution context over the shared weights; the caller closes it."""
        llm = _context_over(self.template, settings)
        with self._lock:
            self.contexts += 1
        return llm

    def close_context(self, llm: Llama) -> None:
        llm.close()
        with self._lock:
            self.contexts -= 1


class GgufRegistry:
    """Loaded GGUFs by (resolved path, GPU layers): one load per key per process,
    reference-counted by holders (a model's wasi-nn graph), freed with the last."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], SharedGguf] = {}
        self._lock = threading.Lock()
        self.loads = 0  # llama_model loads this registry performed, in all

    def acquire(self, path: Path, *, alias: str, n_gpu_layers: int = 0) -> SharedGguf:
        """The loaded GGUF at ``path`` (loading it on first use); ``alias`` is the name
        the holder's preload gives it. Raises ``ValueError``/``RuntimeError`` from
        llama.cpp when the file does not load."""
        key = (str(path.resolve()), int(n_gpu_layers))
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                # Loading under the lock: a second holder of the same file waits for
                # the first load instead of loading its own copy.
                template = Llama(
                    model_path=key[0],
                    n_ctx=_TEMPLATE_CTX,
                    n_batch=_TEMPLATE_CTX,
                    n_gpu_layers=key[1],
                    use_mmap=True,
                    verbose=False,
                )
                self.loads += 1
                found = SharedGguf(Path(key[0]), key[1], template)
                self._entries[key] = found
            found.holders += 1
            found.aliases.add(alias)
            return found

    def release(self, shared: SharedGguf) -> None:
        """One holder is done; the last one frees the weights (its contexts must be
        closed first)."""
        key = (str(shared.path), shared.n_gpu_layers)
        with self._lock:
            shared.holders -= 1
            if shared.holders > 0:
                return
            self._entries.pop(key, None)
        shared.template.close()

    def entries(self) -> list[GgufEntry]:
        with self._lock:
            return [
                GgufEntry(
                    preload=(
                        f"{','.join(sorted(e.aliases))}:GGML:"
                        f"{'GPU' if e.n_gpu_layers else 'CPU'}:{e.path}"
                    ),
                    holders=e.holders,
                    contexts=e.contexts,
                )
                for e in self._entries.values()
            ]


_PROCESS_REGISTRY: GgufRegistry | None = None
_PROCESS_LOCK = threading.Lock()


def gguf_registry() -> GgufRegistry:
    """The process's registry (made on first use, not at import)."""
    global _PROCESS_REGISTRY
    with _PROCESS_LOCK:
        if _PROCESS_REGISTRY is None:
            _PROCESS_REGISTRY = GgufRegistry()
        return _PROCESS_REGISTRY


def _context_over(template: Llama, s: ContextSettings) -> Llama:
    """A ``Llama`` sharing ``template``'s model (weights, vocabulary, metadata, chat
    handlers) with its own llama.cpp context, batch, token and logit buffers and
    sampler, as ``Llama.__init__`` would make them for these settings. Closing it
    frees only what is its own."""
    llm = Llama.__new__(Llama)
    llm.__dict__.update(template.__dict__)
    n_ctx = s.n_ctx if s.n_ctx > 0 else template._model.n_ctx_train()
    n_batch = max(1, min(n_ctx, s.n_batch))
    params = type(template.context_params).from_buffer_copy(template.context_params)
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_threads = s.threads
    params.n_threads_batch = s.threads
    params.embeddings = s.embedding
    if s.embedding:
        params.n_seq_max = min(n_batch, llama_cpp.llama_max_parallel_sequences())
        params.kv_unified = True
    stack = contextlib.ExitStack()
    llm._stack = stack
    llm.context_params = params
    llm.n_batch = n_batch
    llm.n_threads = s.threads
    llm.n_threads_batch = s.threads
    llm.verbose = s.verbose
    llm._ctx = stack.enter_context(
        contextlib.closing(
            internals.LlamaContext(model=template._model, params=params, verbose=s.verbose)
        )
    )
    llm._batch = stack.enter_context(
        contextlib.closing(
            internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=n_ctx, verbose=s.verbose)
        )
    )
    llm._n_ctx = llm.n_ctx()
    llm._candidates = internals.LlamaTokenDataArray(n_vocab=llm._n_vocab)
    llm.n_tokens = 0
    llm._requires_eval = True
    llm.input_ids = np.ndarray((n_ctx,), dtype=np.intc)
    llm.scores = np.ndarray((n_batch, llm._n_vocab), dtype=np.single)
    llm._mirostat_mu = ctypes.c_float(2.0 * 5.0)
    llm._sampler = None
    llm.cache = None
    llm._chat_handlers = dict(template._chat_handlers)
    return llm
