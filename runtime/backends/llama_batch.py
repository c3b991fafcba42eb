"""Continuous batching for the llama runtime: several sequences decoded together in
one llama.cpp context.

One thread owns the context. Each step it builds one ``llama_batch`` holding the next
token of every sequence that is generating and as much of a newly joined sequence's
prompt as fits in ``n_batch``, runs ``llama_decode`` once, and samples every sequence
that has logits from its own sampler chain (the request's temperature, top_p, top_k,
penalties, seed and grammar; the chain and its order are ``create_completion``'s).
A request that arrives while others generate joins at the next step; one that finds
every sequence slot taken waits in line (first come, first served). The KV cache is
split per sequence (``kv_unified`` off), so each sequence has the model's whole
``context_length``; a finished sequence's cells are cleared for the next one.

A step costs about the same whether it carries one token or eight on a small model
(the weights are read once per step), which is where the throughput comes from.
Numbers in a batch are summed in a different order than alone, so a sampled answer
can differ from a solo run in rare near-ties; a seed still makes a request repeatable
when it runs with the same neighbours.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar, llama_vocab_is_eog
from llama_cpp._internals import LlamaContext, LlamaSampler

from runtime.backends.llama_decode import TextOut, grammar_parses, log_softmax
from runtime.errors import BadInput, EdgeInferError, RuntimeFailure
from runtime.spec.types import SamplingParams, TokenChunk

__all__ = ["BatchEngine", "BatchJob"]

log = logging.getLogger("edgeinfer.llama")

Emit = Callable[[Any], None]


@dataclass
class BatchJob:
    """One generation asked of the engine. ``emit`` receives TokenChunks, then the
    final chunk (finish reason and usage), then ``done``; or an exception."""

    tokens: list[int]
    max_tokens: int
    params: SamplingParams
    stops: list[str]
    seed: int
    cancel: threading.Event
    emit: Emit
    done: object


@dataclass
class _Seq:
    job: BatchJob
    seq_id: int
    sampler: LlamaSampler
    out: TextOut
    fed: int = 0  # prompt tokens already in the KV cache
    last: int | None = None  # the token sampled last, fed at the next step
    logits_at: int = -1  # its row in this step's batch, or -1 when it has none

    @property
    def pos(self) -> int:
        """The position of ``last`` in the sequence: after the prompt and the tokens
        sampled before it."""
        return self.fed + self.out.used - 1


class BatchEngine:
    """A llama.cpp context of ``parallel`` sequences and the thread that decodes it.

    ``llm`` provides the model (weights, vocabulary, tokenizer); the engine makes its
    own context from ``llm``'s parameters. ``counted`` is told how many tokens each
    finished generation produced."""

    def __init__(
        self,
        llm: Llama,
        *,
        parallel: int,
        context_length: int,
        n_batch: int,
        counted: Callable[[int], None],
        name: str,
    ) -> None:
        self.llm = llm
        self.parallel = parallel
        self.n_batch = n_batch
        self._counted = counted
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = context_length * parallel
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = parallel
        params.kv_unified = False
        self._ctx = LlamaContext(model=llm._model, params=params, verbose=False)
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx(self._ctx.ctx)) // parallel
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_vocab = llm.n_vocab()
        self._waiting: deque[BatchJob] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self.peak = 0  # the most sequences one step has carried (stats, tests)
        self._thread = threading.Thread(target=self._run, name=f"llama-batch-{name}", daemon=True)
        self._thread.start()

    # -- the event loop's side -------------------------------------------------------

    def submit(self, job: BatchJob) -> None:
        """Queue ``job``; it joins the batch at the next step with a free sequence."""
        with self._wake:
            if self._closing:
                raise RuntimeFailure("the model is unloading")
            self._waiting.append(job)
            self._wake.notify()

    def close(self) -> None:
        """Finish the generations in flight and waiting, then free the context."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        active: dict[int, _Seq] = {}
        while True:
            with self._wake:
                while not active and not self._waiting and not self._closing:
                    self._wake.wait()
                if not active and not self._waiting and self._closing:
                    return
                joining: list[BatchJob] = []
                while self._waiting and len(active) + len(joining) < self.parallel:
                    joining.append(self._waiting.popleft())
            free = [i for i in range(self.parallel) if i not in active]
            for job, seq_id in zip(joining, free, strict=False):
                seq = self._start(job, seq_id)
                if seq is not None:
                    active[seq_id] = seq
            try:
                for seq in [s for s in active.values() if s.job.cancel.is_set()]:
                    self._finish(active, seq, "cancelled")
                if active:
                    self._step(active)
            except Exception as exc:  # a failure inside llama.cpp: fail the batch, go on
                log.exception("llama batch step failed")
                err = RuntimeFailure(f"llama.cpp failed: {exc}")
                for seq in list(active.values()):
                    self._drop(active, seq, err)

    def _start(self, job: BatchJob, seq_id: int) -> _Seq | None:
        if job.cancel.is_set():
            job.emit(job.done)
            return None
        try:
            sampler = self._sampler(job.params, job.seed)
        except EdgeInferError as exc:
            job.emit(exc)
            return None
        except Exception as exc:  # llama-cpp-python refused the sampler chain
            job.emit(RuntimeFailure(f"llama.cpp could not build the sampler: {exc}"))
            return None
        out = TextOut(self.llm, job.stops, len(job.tokens), job.params.top_logprobs, job.emit)
        return _Seq(job, seq_id, sampler, out)

    def _sampler(self, p: SamplingParams, seed: int) -> LlamaSampler:
        """The chain ``Llama._init_sampler`` builds, with this request's seed."""
        sampler = LlamaSampler()
        sampler.add_penalties(
            n_vocab=self._n_vocab,
            penalty_last_n=self.llm.last_n_tokens_size,
            penalty_repeat=p.repeat_penalty,
            penalty_freq=p.frequency_penalty,
            penalty_present=p.presence_penalty,
        )
        if p.grammar:
            if not grammar_parses(self.llm, p.grammar):
                sampler.close()
                raise BadInput("the grammar made from the request did not parse in llama.cpp")
            sampler.add_grammar(self.llm._model, LlamaGrammar.from_string(p.grammar, verbose=False))
        if p.temperature < 0.0:
            sampler.add_dist(seed)
        elif p.temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(p.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(p.top_p, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(p.temperature)
            sampler.add_dist(seed)
        return sampler

    def _step(self, active: dict[int, _Seq]) -> None:
        batch = self._batch
        n = 0

        def put(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        # Generating sequences first: one token each, so a long prompt joining never
        # stalls them; then prompts, in chunks of what is left of n_batch.
        for seq in active.values():
            seq.logits_at = -1
            if seq.last is not None:
                seq.logits_at = n
                put(seq.last, seq.pos, seq.seq_id, True)
        for seq in active.values():
            left = len(seq.job.tokens) - seq.fed
            if seq.last is not None or left == 0 or n >= self.n_batch:
                continue
            take = min(left, self.n_batch - n)
            for i in range(take):
                put(seq.job.tokens[seq.fed + i], seq.fed + i, seq.seq_id, False)
            seq.fed += take
            if seq.fed == len(seq.job.tokens):
                batch.logits[n - 1] = True
                seq.logits_at = n - 1
        batch.n_tokens = n
        self.peak = max(self.peak, len(active))
        rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        vocab = self.llm._model.vocab
        for seq in list(active.values()):
            if seq.logits_at < 0:
                continue
            lp = None
            if seq.job.params.top_logprobs is not None:
                row = llama_cpp.llama_get_logits_ith(self._ctx.ctx, seq.logits_at)
                lp = log_softmax(np.ctypeslib.as_array(row, shape=(self._n_vocab,)))
            token = int(
                llama_cpp.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, seq.logits_at)
            )
            if llama_vocab_is_eog(vocab, token):
                self._finish(active, seq, "stop")
            elif seq.out.add(token, lp):
                self._finish(active, seq, "stop")
            elif seq.out.used >= seq.job.max_tokens:
                self._finish(active, seq, "length")
            else:
                seq.last = token

    def _release(self, active: dict[int, _Seq], seq: _Seq) -> None:
        del active[seq.seq_id]
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
        seq.sampler.close()
        self._counted(seq.out.used)

    def _finish(self, active: dict[int, _Seq], seq: _Seq, reason: str) -> None:
        self._release(active, seq)
        try:
            seq.out.close()
        finally:
            used = seq.out.used
            seq.job.emit(
                TokenChunk("", reason, prompt_tokens=len(seq.job.tokens), completion_tokens=used)
            )
            seq.job.emit(seq.job.done)

    def _drop(self, active: dict[int, _Seq], seq: _Seq, err: EdgeInferError) -> None:
        self._release(active, seq)
        with contextlib.suppress(RuntimeError):  # its event loop is gone (shutdown)
            seq.job.emit(err)
