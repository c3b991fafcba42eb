"""The llama runtime's token loop: sampling under a grammar, stop sequences, logprobs.

llama-cpp-python's ``create_completion`` computes logprobs only when a model is
created with ``logits_all=True`` (a float per vocabulary entry per context position:
400 MB for SmolLM2 at 2048 tokens), so this loop drives ``Llama.generate`` itself and
takes each step's logits from the first stage of the sampler chain, before penalties
and the grammar touch them: the logprobs are the model's own distribution, as
OpenAI's are. The sampler chain, its defaults (``min_p`` 0.05, ``typical_p`` 1) and
the text are those of ``create_completion``, so answers match it token for token.

Runs in a worker thread; ``emit`` hands each item to the event loop.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import (
    Llama,
    LlamaGrammar,
    LogitsProcessorList,
    StoppingCriteriaList,
    llama_vocab_is_eog,
)

from runtime.errors import BadInput
from runtime.spec.types import SamplingParams, TokenChunk, TokenLogprob

__all__ = ["TextOut", "decode", "describe", "grammar_parses", "log_softmax"]


def grammar_parses(llm: Llama, gbnf: str) -> bool:
    """Whether llama.cpp accepts ``gbnf``. It must be checked first: llama-cpp-python
    adds whatever llama.cpp returns to the sampler chain, and a grammar that does not
    parse comes back as NULL, which crashes the process when sampled."""
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


class _Logprobs:
    """A logits processor that keeps one step's log-probabilities (before penalties
    and the grammar touch them)."""

    def __init__(self) -> None:
        self.last: np.ndarray | None = None

    def __call__(self, _ids: Any, logits: np.ndarray) -> np.ndarray:
        self.last = log_softmax(logits)
        return logits


class TextOut:
    """One generation's text: detokenizes sampled tokens, cuts at a stop sequence and
    emits chunks as they are safe to show (a tail that could begin a stop sequence is
    held back). Shared by the one-sequence loop below and the batch engine
    (``runtime.backends.llama_batch``)."""

    def __init__(
        self,
        llm: Llama,
        stops: list[str],
        n_prompt: int,
        top_logprobs: int | None,
        emit: Callable[[TokenChunk], None],
    ) -> None:
        self.llm = llm
        self.stops = stops
        self.n_prompt = n_prompt
        self.top = top_logprobs
        self.emit = emit
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far
        self.sent = 0  # how much of it has been emitted
        self.pending: list[tuple[int, TokenLogprob]] = []  # (end offset in text, logprob)
        self.longest_stop = max((len(s) for s in stops), default=0)
        self.used = 0
        self.cut = False  # by a stop sequence

    def _flush(self, upto: int) -> None:
        ready = tuple(lp for end, lp in self.pending if end <= upto)
        self.pending = [(end, lp) for end, lp in self.pending if end > upto]
        if upto > self.sent or ready:
            self.emit(
                TokenChunk(self.text[self.sent : upto], prompt_tokens=self.n_prompt, logprobs=ready)
            )
        self.sent = max(self.sent, upto)

    def add(self, token: int, logprobs: np.ndarray | None) -> bool:
        """Takes one sampled (non end-of-generation) token and the step's
        log-probabilities (when asked for); True when a stop sequence ended the text."""
        self.used += 1
        self.text += self.decoder.decode(self.llm.detokenize([token]))
        if logprobs is not None:
            self.pending.append(
                (len(self.text), describe(self.llm, logprobs, token, self.top or 0))
            )
        start = max(0, self.sent - self.longest_stop)
        cuts = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.cut = True
            return True
        held = max((_overlap(self.text, s) for s in self.stops), default=0)
        self._flush(len(self.text) - held)
        return False

    def close(self) -> None:
        """Emits what was held back (the generation has ended)."""
        if not self.cut:
            self.text += self.decoder.decode(b"", final=True)
        self._flush(len(self.text))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - float(np.log(np.exp(shifted).sum()))


def describe(llm: Llama, lp: np.ndarray, token: int, top: int) -> TokenLogprob:
    """``token`` and the ``top`` most likely alternatives under log-probabilities ``lp``."""

    def piece(t: int) -> tuple[str, bytes]:
        raw = llm.detokenize([t])
        return raw.decode("utf-8", errors="replace"), raw

    best_of: tuple[tuple[str, bytes, float], ...] = ()
    if top:
        best = np.argpartition(-lp, top)[:top]
        best = best[np.argsort(-lp[best])]
        best_of = tuple((*piece(int(i)), float(lp[i])) for i in best)
    text, raw = piece(token)
    return TokenLogprob(text, raw, float(lp[token]), best_of)


def decode(
    llm: Llama,
    tokens: list[int],
    max_tokens: int,
    params: SamplingParams,
    stops: list[str],
    seed: int,
    cancel: threading.Event,
    emit: Callable[[TokenChunk], None],
) -> tuple[str, int]:
    """Generates after ``tokens`` in ``llm``'s own context (one sequence); emits text
    chunks through a :class:`TextOut`. Returns (finish_reason, completion tokens)."""
    capture = _Logprobs() if params.top_logprobs is not None else None
    grammar = None
    if params.grammar:
        if not grammar_parses(llm, params.grammar):
            raise BadInput("the grammar made from the request did not parse in llama.cpp")
        grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
    llm.set_seed(seed)
    out = TextOut(llm, stops, len(tokens), params.top_logprobs, emit)
    finish = "length"
    generator = llm.generate(
        tokens,
        top_k=params.top_k,
        top_p=params.top_p,
        min_p=0.05,
        typical_p=1.0,
        temp=params.temperature,
        repeat_penalty=params.repeat_penalty,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        logits_processor=LogitsProcessorList([capture]) if capture else None,
        stopping_criteria=StoppingCriteriaList([lambda _ids, _logits: cancel.is_set()]),
        grammar=grammar,
    )
    try:
        for token in generator:
            if cancel.is_set():
                finish = "cancelled"
                break
            if llama_vocab_is_eog(llm._model.vocab, token):
                finish = "stop"
                break
            if out.add(token, capture.last if capture is not None else None):
                finish = "stop"
                break
            if out.used >= max_tokens:
                break
    finally:
        generator.close()
    if finish == "length" and cancel.is_set() and out.used < max_tokens:
        finish = "cancelled"
    out.close()
    return finish, out.used


def _overlap(text: str, stop: str) -> int:
    """The length of the longest proper prefix of ``stop`` that ``text`` ends with."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
