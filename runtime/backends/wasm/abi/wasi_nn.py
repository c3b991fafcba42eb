"""The ``wasi-nn`` ABI for the worker: a WASI command that imports ``wasi_ephemeral_nn``
serves chat and completion requests.

Per request the host renders the prompt (chat: the GGUF's own chat template), passes it
on the guest's stdin, fills the placeholders of the manifest's ``args`` and streams the
guest's stdout back as the answer. Token counts and the finish reason come from the
GGML backend's metadata of the call (what ``get_output`` index 1 returns).

Placeholders: ``{max_tokens}`` (-1 when unset), ``{temperature}``, ``{top_p}``,
``{repeat_penalty}``, ``{seed}`` (-1 when unset), ``{ctx_size}``, ``{file:NAME}``.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from runtime.backends.registry import LoadPhases
from runtime.backends.wasm.abi.base import GuestAbi
from runtime.backends.wasm.host import Sandbox, Template
from runtime.backends.wasm.pool import GuestPool
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn
from runtime.backends.wasm.wasi_nn.types import CONTEXT_FULL, PROMPT_TOO_LONG
from runtime.errors import (
    BadInput,
    ContextOverflow,
    DeadlineExceeded,
    GuestOutOfMemory,
    GuestTrap,
    UnsupportedTask,
)
from runtime.spec.types import GenerateRequest, TokenChunk

__all__ = ["WasiNnGuest", "fill_args"]

_FINISH = {"eos": "stop", "reverse_prompt": "stop", "n_predict": "length", "context_full": "length"}


def fill_args(args: list[str], values: dict[str, Any]) -> list[str]:
    """The manifest's args with ``{name}`` placeholders replaced."""
    filled = []
    for arg in args:
        try:
            filled.append(arg.format_map(values))
        except (KeyError, ValueError, IndexError) as exc:
            raise BadInput(f"WASM package argument {arg!r}: unknown placeholder {exc}") from None
    return filled


class _Files(dict[str, str]):
    """``{file:NAME}`` lookups: ``format_map`` asks for the key ``file:NAME``."""


class WasiNnGuest(GuestAbi):
    template: Template
    nn: NnHost
    pool: GuestPool
    _formatter: Jinja2ChatFormatter | None = None
    _generated = 0

    def load(self, phases: LoadPhases) -> None:
        manifest = self.package.manifest
        opts = self.spec.options
        self.nn = NnHost(
            manifest.preloads,
            self.package.preload_paths,
            ggml_defaults={
                "ctx-size": opts.context_length,
                "batch-size": min(opts.batch_size, opts.context_length),
                **({"threads": opts.threads} if opts.threads else {}),
            },
            threads=opts.threads or 1,
        )
        module = self.host.module(self.package.guest_path)
        phases.end("compile")
        self.template = self.host.template(module, define_wasi_nn)
        phases.end("link")
        for preload in manifest.preloads:
            graph = self.nn.graph(preload.name)
            if preload.encoding == "GGML":
                graph.warm()  # one llama.cpp context, its buffers allocated
                if self._formatter is None:
                    found = graph.chat_template()
                    if found is not None:
                        template, bos, eos = found
                        self._formatter = Jinja2ChatFormatter(
                            template, eos_token=eos, bos_token=bos
                        )
        phases.end("load")
        self.pool = GuestPool(opts.parallel, self.spec.name)
        self._lock = threading.Lock()

    def close(self) -> None:
        if hasattr(self, "pool"):
            self.pool.close()
        if hasattr(self, "nn"):
            self.nn.close()

    def tokens_generated(self) -> int:
        return self._generated

    def _prompt(self, request: GenerateRequest) -> str:
        if request.messages is None:
            assert request.prompt is not None
            return request.prompt
        if self._formatter is None:
            raise UnsupportedTask(
                f"model {self.spec.name!r}: its GGUF has no chat template; use /v1/completions"
            )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            return self._formatter(messages=cast(Any, messages)).prompt
        except Exception as exc:  # jinja2 errors from the model's own template
            raise BadInput(f"the model's chat template rejected the messages: {exc}") from exc

    def _args(self, request: GenerateRequest) -> list[str]:
        p = request.params
        values: dict[str, Any] = _Files(
            {f"file:{name}": self.package.guest_file(name) for name in self.package.files}
        )
        values.update(
            max_tokens=p.max_tokens if p.max_tokens is not None else -1,
            temperature=p.temperature,
            top_p=p.top_p,
            repeat_penalty=p.repeat_penalty,
            seed=p.seed if p.seed is not None else -1,
            ctx_size=self.spec.options.context_length,
        )
        return fill_args(self.package.manifest.args, values)

    def _sandbox(
        self,
        prompt: str,
        args: list[str],
        stdout: Callable[[bytes], None],
        stderr: Callable[[bytes], None],
    ) -> Sandbox:
        manifest = self.package.manifest
        return Sandbox(
            args=args,
            env=manifest.env,
            mounts=self.package.mounts(),
            timeout_s=min(manifest.limits.timeout_s, self.spec.scaling.timeout),
            max_memory_bytes=manifest.limits.max_memory_mib << 20,
            stdin=prompt.encode("utf-8"),
            stdout=stdout,
            stderr=stderr,
            program=self.package.guest_path.name,
        )

    def _run(
        self, prompt: str, args: list[str], emit: Callable[[bytes], None], cancel: threading.Event
    ) -> NnCall:
        state = NnCall(self.nn, stdout=emit)
        state.cancel = cancel
        tail = bytearray()

        def stderr(data: bytes) -> None:  # keep the last 4 KiB for the error message
            tail.extend(data)
            del tail[:-4096]

        try:
            result = self.template.run(self._sandbox(prompt, args, emit, stderr), state)
        except DeadlineExceeded:
            if not cancel.is_set():
                raise
            return state  # stopped on purpose (a stop sequence, or the client left)
        finally:
            state.close()
        if result.exit_code != 0:
            stderr_text = bytes(tail).decode("utf-8", "replace").strip()
            if state.last_error == PROMPT_TOO_LONG:
                raise ContextOverflow(
                    f"the prompt does not fit model {self.spec.name!r}'s context of "
                    f"{self.spec.options.context_length} tokens. Shorten the prompt."
                )
            limit = self.package.manifest.limits.max_memory_mib << 20
            if result.memory_bytes + max(2 << 20, limit // 20) >= limit:
                raise GuestOutOfMemory(
                    f"guest {self.package.guest_path.name!r} failed at its memory limit "
                    f"({limit >> 20} MiB): {stderr_text[-500:]}"
                )
            raise GuestTrap(
                f"guest {self.package.guest_path.name!r} exited with code {result.exit_code}: "
                f"{stderr_text[-500:] or '(no output on stderr)'}"
            )
        return state

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenChunk, None]:  # type: ignore[override]
        prompt = self._prompt(request)
        args = self._args(request)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = [s for s in request.params.stop if s]
        text = ""
        sent = 0
        state: NnCall | None = None
        cancel = threading.Event()
        stopped = False  # by one of the request's stop sequences

        def run(emit: Callable[[bytes], None], cancel: threading.Event) -> NnCall:
            return self._run(prompt, args, emit, cancel)

        stream = self.pool.stream(run, cancel)
        try:
            async for item in stream:
                if isinstance(item, NnCall):
                    state = item
                    break
                if stopped:  # after a stop sequence: wait for the guest to end
                    continue
                text += decoder.decode(item)
                cut = _stop_at(text, stops)
                if cut is not None:
                    if cut > sent:
                        yield TokenChunk(text[sent:cut])
                    sent = cut
                    stopped = True
                    cancel.set()
                    continue
                # Hold back a tail that could be the start of a stop sequence.
                safe = len(text) - max((len(s) - 1 for s in stops), default=0)
                if safe > sent:
                    yield TokenChunk(text[sent:safe])
                    sent = safe
        finally:
            await stream.aclose()
        assert state is not None
        if stopped:
            finish = "stop"
        else:
            text += decoder.decode(b"", final=True)
            if len(text) > sent:
                yield TokenChunk(text[sent:])
            finish = _FINISH.get(str(state.last_metadata.get("stop_reason", "")), "stop")
            if state.last_error == CONTEXT_FULL:
                finish = "length"
        meta = state.last_metadata
        used = int(meta.get("output_tokens", 0))
        self._generated += used
        yield TokenChunk(
            "",
            finish,
            prompt_tokens=int(meta.get("input_tokens", 0)),
            completion_tokens=used,
        )


def _stop_at(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
