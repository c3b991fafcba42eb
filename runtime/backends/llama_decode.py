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

__all__ = ["decode", "grammar_parses"]


def grammar_parses(llm: Llama, gbnf: str) -> bool:
    """Whether llama.cpp accepts ``gbnf``. It must be checked first: llama-cpp-python
    adds whatever llama.cpp returns to the sampler chain, and a grammar that does not
    parse comes back as NULL, which crashes the process when sampled."""
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - float(np.log(np.exp(shifted).sum()))


class _Logprobs:
    """Captures one step's log-probabilities (a logits processor) and describes the
    token then sampled from them."""

    def __init__(self, llm: Llama, top: int) -> None:
        self.llm = llm
        self.top = top
        self.last: np.ndarray | None = None

    def __call__(self, _ids: Any, logits: np.ndarray) -> np.ndarray:
        self.last = _log_softmax(logits)
        return logits

    def _piece(self, token: int) -> tuple[str, bytes]:
        raw = self.llm.detokenize([token])
        return raw.decode("utf-8", errors="replace"), raw

    def describe(self, token: int) -> TokenLogprob:
        assert self.last is not None
        lp = self.last
        top: tuple[tuple[str, bytes, float], ...] = ()
        if self.top:
            best = np.argpartition(-lp, self.top)[: self.top]
            best = best[np.argsort(-lp[best])]
            top = tuple((*self._piece(int(i)), float(lp[i])) for i in best)
        text, raw = self._piece(token)
        return TokenLogprob(text, raw, float(lp[token]), top)


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
    """Generates after ``tokens``; emits text chunks as they are safe to show (a tail
    that could begin a stop sequence is held back). Returns (finish_reason, number of
    completion tokens)."""
    capture = _Logprobs(llm, params.top_logprobs or 0) if params.top_logprobs is not None else None
    grammar = None
    if params.grammar:
        if not grammar_parses(llm, params.grammar):
            raise BadInput("the grammar made from the request did not parse in llama.cpp")
        grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
    llm.set_seed(seed)
    n_prompt = len(tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""  # everything decoded so far
    sent = 0  # how much of it has been emitted
    pending: list[tuple[int, TokenLogprob]] = []  # (end offset in text, logprob)
    longest_stop = max((len(s) for s in stops), default=0)
    finish, used = "length", 0
    cut = False  # by a stop sequence

    def flush(upto: int) -> None:
        nonlocal sent, pending
        ready = tuple(lp for end, lp in pending if end <= upto)
        pending = [(end, lp) for end, lp in pending if end > upto]
        if upto > sent or ready:
            emit(TokenChunk(text[sent:upto], prompt_tokens=n_prompt, logprobs=ready))
        sent = max(sent, upto)

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
            used += 1
            text += decoder.decode(llm.detokenize([token]))
            if capture is not None:
                pending.append((len(text), capture.describe(token)))
            start = max(0, sent - longest_stop)
            cuts = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            if cuts:
                text = text[: min(cuts)]
                finish, cut = "stop", True
                break
            held = max((_overlap(text, s) for s in stops), default=0)
            flush(len(text) - held)
            if used >= max_tokens:
                break
    finally:
        generator.close()
    if finish == "length" and cancel.is_set() and used < max_tokens:
        finish = "cancelled"
    if not cut:
        text += decoder.decode(b"", final=True)
    flush(len(text))
    return finish, used


def _overlap(text: str, stop: str) -> int:
    """The length of the longest proper prefix of ``stop`` that ``text`` ends with."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
