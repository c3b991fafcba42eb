"""The wasi-nn ``GGML`` backend on llama-cpp-python, with the options and behaviour of
WasmEdge's GGML plugin.

Options (the JSON config of ``load_by_name_with_config``, or input 1 of ``set_input``):
``n-predict`` (-1: until end of sequence or a full context), ``ctx-size``,
``batch-size``, ``n-gpu-layers``, ``threads``, ``temp``, ``top-p``,
``repeat-penalty``, ``presence-penalty``, ``frequency-penalty``, ``seed``,
``reverse-prompt``, ``stream-stdout`` (print each token to the guest's stdout as it is
generated), ``enable-log``, ``enable-debug-log``, and the options that change what
comes out: ``grammar`` (llama.cpp GBNF), ``json-schema`` (a JSON Schema, as a JSON
string or an object, turned into a grammar by ``runtime.grammar`` with its checks and
bounds; not both), ``embedding`` (``compute`` then writes the prompt's embedding as
WasmEdge writes it, ``{"n_embedding": N, "embedding": [...]}``: the model's pooled
embedding, or the mean of its token embeddings when it pools none, L2-normalised).
A grammar that does not parse, or a schema that is refused, is INVALID_ARGUMENT.
Unknown keys are ignored, as WasmEdge does.

Input 0 is the prompt (U8 bytes, special tokens parsed); output 0 the generated text,
output 1 metadata JSON (``input_tokens``, ``output_tokens``, ...). ``compute`` runs a
whole generation; ``compute_single`` one token at a time, returning END_OF_SEQUENCE
when the model ends (or ``n-predict`` is reached) and CONTEXT_FULL when the context
is. A prompt that does not fit is PROMPT_TOO_LONG.

A llama.cpp context is not thread-safe: each execution context borrows a ``Llama``
context from a pool per option set and gives it back when finalized. Every context is
made over one loaded copy of the GGUF, shared by every model in the process that names
the same file (:mod:`runtime.backends.wasm.wasi_nn.gguf_registry`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar

from runtime.backends.llama import gguf_chat_template
from runtime.backends.llama_decode import grammar_parses
from runtime.backends.wasm.wasi_nn.gguf_registry import (
    ContextSettings,
    GgufRegistry,
    SharedGguf,
    gguf_registry,
)
from runtime.backends.wasm.wasi_nn.types import (
    CONTEXT_FULL,
    END_OF_SEQUENCE,
    INVALID_ARGUMENT,
    PROMPT_TOO_LONG,
    RUNTIME_ERROR,
    NnError,
    NnTensor,
)
from runtime.errors import BadInput
from runtime.spec.grammar import GrammarBuilder

__all__ = ["GgmlGraph", "GgmlModel"]

_INSTANCE_KEYS = ("ctx-size", "batch-size", "threads", "n-gpu-layers", "enable-log", "embedding")


class GgmlModel:
    """One preloaded GGUF (``alias``) and the pool of llama.cpp contexts made over it;
    the weights come from ``registry`` (the process's by default), loaded once per
    file however many models name it."""

    def __init__(
        self,
        path: Path,
        defaults: dict[str, Any],
        *,
        alias: str = "default",
        registry: GgufRegistry | None = None,
    ) -> None:
        self.path = path
        self.alias = alias
        self.registry = registry if registry is not None else gguf_registry()
        self._shared: dict[int, SharedGguf] = {}  # by GPU layers offloaded
        self.defaults = {
            "n-predict": -1,
            "ctx-size": 4096,
            "batch-size": 512,
            "n-gpu-layers": 0,
            "threads": os.cpu_count() or 1,
            "temp": 0.8,
            "top-p": 0.95,
            "repeat-penalty": 1.1,
            "presence-penalty": 0.0,
            "frequency-penalty": 0.0,
            "seed": -1,
            "reverse-prompt": "",
            "stream-stdout": False,
            "enable-log": False,
            "enable-debug-log": False,
            "grammar": "",
            "json-schema": "",
            "embedding": False,
            **defaults,
        }
        self._free: dict[tuple[Any, ...], list[Llama]] = {}
        self._all: list[Llama] = []
        self._lock = threading.Lock()
        self.closed = False

    def options(self, config: dict[str, Any]) -> dict[str, Any]:
        opts = dict(self.defaults)
        for key, value in config.items():
            if key in opts:
                opts[key] = value
        return opts

    def acquire(self, opts: dict[str, Any]) -> Llama:
        key = tuple(opts[k] for k in _INSTANCE_KEYS)
        with self._lock:
            free = self._free.setdefault(key, [])
            if free:
                return free.pop()
        settings = ContextSettings(
            n_ctx=int(opts["ctx-size"]),
            n_batch=int(opts["batch-size"]),
            threads=int(opts["threads"]),
            embedding=bool(opts["embedding"]),
            verbose=bool(opts["enable-log"] or opts["enable-debug-log"]),
        )
        try:
            weights = self._weights(int(opts["n-gpu-layers"]))
            llm = weights.context(settings)
        except (ValueError, RuntimeError) as exc:
            raise NnError(RUNTIME_ERROR, f"llama.cpp could not load {self.path}: {exc}") from exc
        llm._edgeinfer_key = key  # type: ignore[attr-defined]
        llm._edgeinfer_weights = weights  # type: ignore[attr-defined]
        with self._lock:
            self._all.append(llm)
        return llm

    def _weights(self, n_gpu_layers: int) -> SharedGguf:
        with self._lock:
            if self.closed:
                raise NnError(RUNTIME_ERROR, f"the model {self.alias!r} is unloaded")
            shared = self._shared.get(n_gpu_layers)
            if shared is None:
                shared = self.registry.acquire(
                    self.path, alias=self.alias, n_gpu_layers=n_gpu_layers
                )
                self._shared[n_gpu_layers] = shared
            return shared

    def release(self, llm: Llama) -> None:
        with self._lock:
            if self.closed:
                llm._edgeinfer_weights.close_context(llm)  # type: ignore[attr-defined]
            else:
                self._free.setdefault(llm._edgeinfer_key, []).append(llm)  # type: ignore[attr-defined]

    def warm(self) -> None:
        """Make one llama.cpp context with the default options and decode one token
        through it (allocates its compute buffers), so the first call does not pay."""
        llm = self.acquire(self.defaults)
        try:
            llm.eval(llm.tokenize(b" ", add_bos=True, special=False))
            llm.reset()
        finally:
            self.release(llm)

    def chat_template(self) -> tuple[str, str, str] | None:
        """(template, bos, eos) from the GGUF metadata, if the model has a template."""
        llm = self.acquire(self.defaults)
        try:
            return gguf_chat_template(llm)
        finally:
            self.release(llm)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for llm in self._all:
                llm._edgeinfer_weights.close_context(llm)  # type: ignore[attr-defined]
            self._all.clear()
            self._free.clear()
            shared, self._shared = list(self._shared.values()), {}
        for weights in shared:
            self.registry.release(weights)


class GgmlGraph:
    """A graph handle: the model plus the options it was loaded with."""

    def __init__(self, model: GgmlModel, config: dict[str, Any]) -> None:
        self.model = model
        self.config = config

    def context(self, stdout: Callable[[bytes], None] | None) -> GgmlContext:
        return GgmlContext(self.model, self.model.options(self.config), stdout)


class GgmlContext:
    """One execution context: a borrowed ``Llama``, the prompt, the generation."""

    def __init__(
        self, model: GgmlModel, opts: dict[str, Any], stdout: Callable[[bytes], None] | None
    ) -> None:
        self.model = model
        self.opts = opts
        self.stdout = stdout
        self.llm: Llama | None = model.acquire(opts)
        self.prompt: bytes = b""
        self.output = bytearray()
        self.last = b""
        self.n_input = 0
        self.n_output = 0
        self.stop_reason = ""
        self._gen: Generator[int, Any, None] | None = None
        self.deadline_check: Callable[[], None] = lambda: None

    # wasi-nn calls -------------------------------------------------------------------
    def set_input(self, index: int, tensor: NnTensor) -> None:
        if index == 0:
            self.prompt = tensor.data
            self._reset()
        elif index == 1:
            try:
                update = json.loads(tensor.data.decode("utf-8") or "{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise NnError(INVALID_ARGUMENT, f"metadata input is not JSON: {exc}") from exc
            if not isinstance(update, dict):
                raise NnError(INVALID_ARGUMENT, "metadata input must be a JSON object")
            opts = self.model.options({**self.opts, **update})
            if any(opts[k] != self.opts[k] for k in _INSTANCE_KEYS):
                self._give_back()
                self.llm = self.model.acquire(opts)
            self.opts = opts
        else:
            raise NnError(
                INVALID_ARGUMENT, f"GGML takes input 0 (prompt) or 1 (metadata), not {index}"
            )

    def compute(self) -> int:
        self._reset()
        if self.opts["embedding"]:
            return self._embed()
        while True:
            code = self.compute_single()
            if code != 0:
                return 0 if code == END_OF_SEQUENCE else code

    def compute_single(self) -> int:
        llm = self._llm()
        self.deadline_check()
        if self.opts["embedding"]:
            raise NnError(
                INVALID_ARGUMENT, "an embedding is computed with compute, not compute_single"
            )
        if self._gen is None:
            if self.stop_reason:
                return END_OF_SEQUENCE if self.stop_reason != "context_full" else CONTEXT_FULL
            self._start(llm)
        assert self._gen is not None
        n_predict = int(self.opts["n-predict"])
        if n_predict >= 0 and self.n_output >= n_predict:
            return self._finish("n_predict", END_OF_SEQUENCE)
        if self.n_input + self.n_output >= self._n_ctx(llm):
            return self._finish("context_full", CONTEXT_FULL)
        try:
            token = next(self._gen)
        except StopIteration:
            return self._finish("eos", END_OF_SEQUENCE)
        except (RuntimeError, ValueError) as exc:
            raise NnError(RUNTIME_ERROR, f"llama.cpp failed: {exc}") from exc
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token):
            return self._finish("eos", END_OF_SEQUENCE)
        piece = llm.detokenize([token], prev_tokens=None)
        self.n_output += 1
        self.output += piece
        self.last = piece
        if self.opts["stream-stdout"]:
            self._print(piece)
        reverse = str(self.opts["reverse-prompt"] or "").encode("utf-8")
        if reverse and self.output.endswith(reverse):
            del self.output[-len(reverse) :]
            return self._finish("reverse_prompt", END_OF_SEQUENCE)
        return 0

    def get_output(self, index: int) -> bytes:
        if index == 0:
            return bytes(self.output)
        if index == 1:
            return self.metadata()
        raise NnError(INVALID_ARGUMENT, f"GGML has outputs 0 (text) and 1 (metadata), not {index}")

    def get_output_single(self, index: int) -> bytes:
        if index == 0:
            return self.last
        return self.get_output(index)

    def fini_single(self) -> None:
        self._reset()

    def close(self) -> None:
        self._reset()
        self._give_back()

    # ---------------------------------------------------------------------------------
    def metadata(self) -> bytes:
        return json.dumps(
            {
                "input_tokens": self.n_input,
                "output_tokens": self.n_output,
                "llama_build_number": llama_cpp.__version__,
                "stop_reason": self.stop_reason,
            }
        ).encode()

    def _n_ctx(self, llm: Llama) -> int:
        # llama.cpp may round the context up, but llama-cpp-python sizes its token
        # buffers by the size asked for: the smaller of the two is the real limit.
        asked = int(self.opts["ctx-size"])
        return min(asked, llm.n_ctx()) if asked > 0 else llm.n_ctx()

    def _llm(self) -> Llama:
        if self.llm is None:
            raise NnError(RUNTIME_ERROR, "the execution context is finalized")
        return self.llm

    def _start(self, llm: Llama) -> None:
        tokens = llm.tokenize(self.prompt, add_bos=True, special=True)
        if len(tokens) >= self._n_ctx(llm):
            raise NnError(
                PROMPT_TOO_LONG,
                f"the prompt is {len(tokens)} tokens; the context holds {self._n_ctx(llm)}",
            )
        self.n_input = len(tokens)
        grammar = self._grammar(llm)
        seed = int(self.opts["seed"])
        if seed >= 0:
            llm.set_seed(seed)
        self._gen = llm.generate(
            tokens,
            temp=float(self.opts["temp"]),
            top_p=float(self.opts["top-p"]),
            repeat_penalty=float(self.opts["repeat-penalty"]),
            presence_penalty=float(self.opts["presence-penalty"]),
            frequency_penalty=float(self.opts["frequency-penalty"]),
            reset=True,
            grammar=grammar,
        )

    def _grammar(self, llm: Llama) -> LlamaGrammar | None:
        gbnf, schema = self.opts["grammar"], self.opts["json-schema"]
        if gbnf and schema:
            raise NnError(INVALID_ARGUMENT, "set grammar or json-schema, not both")
        if schema:
            try:
                parsed = json.loads(schema) if isinstance(schema, str) else schema
                builder = GrammarBuilder()
                gbnf = builder.grammar(builder.schema(parsed, "json-schema"))
            except json.JSONDecodeError as exc:
                raise NnError(INVALID_ARGUMENT, f"json-schema is not JSON: {exc}") from exc
            except BadInput as exc:
                raise NnError(INVALID_ARGUMENT, exc.message) from exc
        if not gbnf:
            return None
        if not isinstance(gbnf, str) or not grammar_parses(llm, gbnf):
            raise NnError(INVALID_ARGUMENT, "grammar is not a GBNF grammar llama.cpp can parse")
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def _embed(self) -> int:
        llm = self._llm()
        text = self.prompt.decode("utf-8", errors="replace")
        tokens = llm.tokenize(self.prompt, add_bos=True, special=True)
        if len(tokens) >= self._n_ctx(llm):
            raise NnError(
                PROMPT_TOO_LONG,
                f"the prompt is {len(tokens)} tokens; the context holds {self._n_ctx(llm)}",
            )
        try:
            raw = np.asarray(llm.embed(text), dtype=np.float64)
        except (RuntimeError, ValueError) as exc:
            raise NnError(RUNTIME_ERROR, f"llama.cpp failed: {exc}") from exc
        vector = raw.mean(axis=0) if raw.ndim == 2 else raw  # token embeddings: mean-pool
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        self.n_input = len(tokens)
        body = {"n_embedding": int(vector.shape[0]), "embedding": [float(v) for v in vector]}
        self.output = bytearray(json.dumps(body).encode())
        self.last = bytes(self.output)
        self.stop_reason = "eos"
        return 0

    def _finish(self, reason: str, code: int) -> int:
        self.stop_reason = reason
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        return code

    def _reset(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None
        self.output = bytearray()
        self.last = b""
        self.n_output = 0
        self.stop_reason = ""

    def _give_back(self) -> None:
        if self.llm is not None:
            self.model.release(self.llm)
            self.llm = None

    def _print(self, piece: bytes) -> None:
        if self.stdout is not None:
            self.stdout(piece)
        else:
            sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
