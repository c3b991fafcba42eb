"""Serving a ``compute`` package: embeddings and Magika classification on our engine.

A package names the engine guest and the model files (manifest ``files``):

* a BERT-family embedding model: ``config`` (config.json), ``weights``
  (model.safetensors) and ``tokenizer`` (tokenizer.json, read by the host);
* a classifier: ``model`` (an ONNX file, with ``options.convert: onnx``), converted once
  on the host into the engine's graph (``runtime.backends.wasm.engine.convert``) and cached in the
  artifact cache, whose folder the guest then sees read-only at ``/files/graph``.

Tokenisation runs on the host with ``tokenizers``: the ids are then exactly those of the
reference pipeline (the accuracy of the engine is the engine's alone), the tokenizer is
a few percent of a request's time, and WordPiece with BERT's normaliser (Unicode NFD,
accent stripping, CJK splitting, punctuation classes) in the guest would mean carrying
Unicode tables into every module. The price is that the host needs ``tokenizers`` (a
wheel exists for every platform wasmtime-py runs on); the guest itself needs nothing.

A batch is split across the instances (each a thread) so that one request uses every
core, and into calls of at most ``options.max_tokens`` padded tokens.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.backends import magika_features
from runtime.backends.registry import LoadPhases, check_batch
from runtime.backends.tensor_inputs import (
    CONTENT_INPUT,
    TEXT_INPUT,
    only_input,
    tensor_bytes,
    tensor_text,
)
from runtime.backends.text_batch import TokenBatch, encode_texts, shared_tokenizer
from runtime.backends.wasm.abi.base import GuestAbi
from runtime.backends.wasm.engine.convert import ensure_graph
from runtime.backends.wasm.engine.reactor import (
    KIND_BERT,
    KIND_GRAPH,
    LOAD_TIMEOUT_S,
    ComputeOptions,
    EnginePool,
    default_instances,
)
from runtime.backends.wasm.engine.snapshot import engine_recipe
from runtime.backends.wasm.host import Sandbox
from runtime.backends.wasm.package import FILES_MOUNT, MANIFEST_NAME
from runtime.backends.wasm.request_pool import RequestPool
from runtime.backends.wasm.reset import page_scan, resettable
from runtime.backends.wasm.snapshot import SnapshotModule, snapshot_cache
from runtime.errors import ConfigError, DeadlineExceeded, ModelNotReady
from runtime.spec.artifacts import resolve_artifact
from runtime.spec.model import Task
from runtime.spec.types import Embeddings, Tensor, TensorSpec

__all__ = ["ComputeGuest", "split_rows"]

GRAPH_MOUNT = f"{FILES_MOUNT}/graph"


def split_rows(lengths: list[int], parts: int, max_tokens: int) -> list[tuple[int, int]]:
    """Contiguous row ranges covering ``lengths``: about ``parts`` groups of equal token
    counts, each cut further so that rows x (longest row in it) <= ``max_tokens``."""
    total = sum(lengths) or 1
    parts = max(1, min(parts, len(lengths)))
    groups: list[tuple[int, int]] = []
    start = acc = 0
    for i, n in enumerate(lengths):
        acc += n
        if (
            len(groups) < parts - 1
            and acc >= total * (len(groups) + 1) / parts
            and i + 1 < len(lengths)
        ):
            groups.append((start, i + 1))
            start = i + 1
    groups.append((start, len(lengths)))
    out: list[tuple[int, int]] = []
    for lo, hi in groups:
        begin, longest = lo, 0
        for i in range(lo, hi):
            longest_with = max(longest, lengths[i])
            if i > begin and (i + 1 - begin) * longest_with > max_tokens:
                out.append((begin, i))
                begin, longest_with = i, lengths[i]
            longest = longest_with
        out.append((begin, hi))
    return out


class ComputeGuest(GuestAbi):
    pool: EnginePool | RequestPool | None = None
    snapshot: SnapshotModule | None = None  # what the instances start from, if snapshotted
    _executor: ThreadPoolExecutor | None = None
    _tokenizer: Tokenizer | None = None
    _magika: magika_features.MagikaConfig | None = None

    def load(self, phases: LoadPhases) -> None:
        manifest = self.package.manifest
        where = f"model {self.spec.name!r}: {self.package.folder / MANIFEST_NAME}"
        self.options = ComputeOptions.parse(manifest.options, where)
        env, mounts, inputs = self._model_files(where)
        if self.options.convert:
            phases.end("convert")
        cores = self.package.settings.threads(self.spec.options.threads)
        size = default_instances(self.options, self.spec.options.parallel, cores)
        sandbox = Sandbox(
            env=env,
            mounts=mounts,
            timeout_s=manifest.limits.timeout_s,
            max_memory_bytes=manifest.limits.max_memory_mib << 20,
            program=self.package.guest_path.name,
        )
        max_tokens = (
            self.options.max_tokens if self.spec.task is Task.EMBEDDING else self.options.max_rows
        )
        self.pool = self._engines(sandbox, inputs, size, max_tokens, phases)
        self._executor = ThreadPoolExecutor(
            max_workers=size, thread_name_prefix=f"engine-{self.spec.name}"
        )
        self._prepare_task(where)
        phases.end("load")
        if self.spec.task is Task.EMBEDDING:
            self._embed_blocking(["warm up"])
        else:
            self._classify_blocking([b"#!/bin/sh\necho warm up\n" * 4])
        phases.end("warmup")

    def _engines(
        self,
        sandbox: Sandbox,
        inputs: list[Path],
        size: int,
        max_tokens: int,
        phases: LoadPhases,
    ) -> EnginePool | RequestPool:
        """The engine instances: pooled (from the snapshot, or each loading the weights)
        or one per call (``isolation: request``, from the snapshot)."""
        max_seq = self.options.max_seq
        if self.options.snapshot:
            recipe = engine_recipe(
                self.package.guest_path,
                sandbox,
                inputs,
                max_tokens=max_tokens,
                max_seq=max_seq,
                load_timeout_s=LOAD_TIMEOUT_S,
            )
            snap = self.snapshot = snapshot_cache(self.host).get(recipe)
            phases.end("snapshot")
            if self.options.isolation == "request":
                return RequestPool(
                    self.host, snap, sandbox, size=size, max_tokens=max_tokens, max_seq=max_seq
                )
            template = snap.template
        else:
            module = self.host.module(self.package.guest_path)
            phases.end("compile")
            template = self.host.template(module)
            phases.end("link")
        made = self.snapshot
        park = page_scan() if made is not None and resettable(made.mutable_globals) else None
        pool = EnginePool(
            self.host,
            template,
            sandbox,
            size=size,
            max_tokens=max_tokens,
            max_seq=max_seq,
            park=park,
            park_memory_bytes=made.memory_bytes if made is not None else 0,
        )
        if not self.options.snapshot:
            pool.fill()  # each instance loads the weights: not on a request's time
        return pool

    def _model_files(self, where: str) -> tuple[dict[str, str], list[tuple[Path, str]], list[Path]]:
        """The guest's environment, its mounts, and the host files ``ei_init`` reads."""
        files = self.package.files
        mounts = list(self.package.mounts())
        if self.options.convert == "onnx":
            if "model" not in files:
                raise ConfigError(f"{where}: options.convert needs files.model (the ONNX file)")
            folder = ensure_graph(
                files["model"], self.package.settings.artifact_cache, name=self.spec.name
            )
            mounts.append((folder, GRAPH_MOUNT))
            config, weights = f"{GRAPH_MOUNT}/graph.json", f"{GRAPH_MOUNT}/model.safetensors"
            inputs = [folder / "graph.json", folder / "model.safetensors"]
        else:
            missing = [n for n in ("config", "weights") if n not in files]
            if missing:
                raise ConfigError(
                    f"{where}: files.{missing[0]} is missing (config.json, model.safetensors)"
                )
            config, weights = self.package.guest_file("config"), self.package.guest_file("weights")
            inputs = [files["config"], files["weights"]]
        return {"EI_CONFIG": config, "EI_WEIGHTS": weights}, mounts, inputs

    def _prepare_task(self, where: str) -> None:
        assert self.pool is not None
        if self.spec.task is Task.EMBEDDING:
            if self.pool.kind != KIND_BERT:
                raise ConfigError(f"{where}: an embedding model needs a BERT config, not a graph")
            if "tokenizer" in self.package.files:
                tok_path = self.package.files["tokenizer"]
            elif self.spec.tokenizer:
                tok_path = resolve_artifact(
                    self.spec.tokenizer,
                    self.package.folder,
                    model=self.spec.name,
                    field="tokenizer",
                )
            else:
                raise ConfigError(f"{where}: files.tokenizer (tokenizer.json) is missing")
            self._tokenizer = shared_tokenizer(tok_path)
            limit = self.spec.options.max_input_tokens or self.pool.max_seq
            self._limit = min(limit, self.pool.max_seq)
        elif self.spec.task is Task.CLASSIFY and self.spec.options.preprocess == "magika":
            if self.pool.kind != KIND_GRAPH:
                raise ConfigError(
                    f"{where}: a classifier needs a converted graph (options.convert)"
                )
            ref = self.spec.options.preprocess_config
            if ref is not None:
                cfg = resolve_artifact(
                    ref,
                    self.package.folder,
                    model=self.spec.name,
                    field="options.preprocess_config",
                )
            elif "preprocess_config" in self.package.files:
                cfg = self.package.files["preprocess_config"]
            else:
                cfg = self.package.files["model"].parent / "config.min.json"
            self._magika = magika_features.load_magika_config(cfg)
            if self._magika.features_size != self.pool.input_width:
                raise ConfigError(
                    f"{where}: Magika's features are {self._magika.features_size} bytes, "
                    f"the model takes {self.pool.input_width}"
                )
        else:
            raise ConfigError(f"{where}: the engine serves embedding and classify (magika) models")

    def release_instances(self) -> int:
        if self.pool is None:
            return 0
        return self.pool.release()

    def live_instances(self) -> int:
        return self.pool.live if self.pool is not None else 0

    def parked_instances(self) -> int:
        return self.pool.parked if self.pool is not None else 0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.pool is not None:
            self.pool.close()
        self.pool = self._executor = None
        if self.snapshot is not None:  # evicted or unloaded: its mapping goes with it
            snapshot_cache(self.host).put(self.snapshot)
            self.snapshot = None

    def _ready(self) -> tuple[EnginePool | RequestPool, ThreadPoolExecutor]:
        if self.pool is None or self._executor is None:
            raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
        return self.pool, self._executor

    def _map(self, jobs: list[tuple[np.ndarray, int, int]]) -> list[np.ndarray]:
        """Run guest calls on the instances in parallel; results in order."""
        pool, executor = self._ready()
        if len(jobs) == 1:
            # On the calling thread (already off the event loop): a hand-off to the
            # executor would wait for another thread's wake-up, which costs most under
            # load. The pool still bounds how many calls run at once (its instances).
            return [pool.run(*jobs[0])]
        # One part failed (a trap, its deadline): the request's answer is that error,
        # so its parts not started yet never run and hold no instance (the failing
        # part says so before its thread takes the next one).
        failed = threading.Event()

        def part(job: tuple[np.ndarray, int, int]) -> np.ndarray:
            if failed.is_set():
                raise DeadlineExceeded("another part of this request failed")
            try:
                return pool.run(*job)
            except BaseException:
                failed.set()
                raise

        futures = [executor.submit(part, job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            failed.set()
            for f in futures:
                f.cancel()
            raise

    # -- embeddings --------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Embeddings:
        if self.spec.task is not Task.EMBEDDING:
            return await super().embed(texts)
        check_batch(self.spec, len(texts), "inputs")
        self._ready()
        return await asyncio.to_thread(self._embed_blocking, texts)

    def _embed_blocking(self, texts: list[str]) -> Embeddings:
        pool, _ = self._ready()
        assert self._tokenizer is not None
        batch = encode_texts(
            self._tokenizer,
            texts,
            limit=self._limit,
            truncate=self.spec.options.truncate,
            model=self.spec.name,
        )
        lengths = batch.mask.sum(axis=1).tolist()
        ranges = split_rows(lengths, pool.size, pool.max_tokens)
        vectors = np.concatenate(self._map([_bert_job(batch, lo, hi) for lo, hi in ranges]))
        return Embeddings(vectors=vectors, prompt_tokens=batch.tokens)

    # -- classification ------------------------------------------------------------------

    def _scores(self, features: np.ndarray) -> np.ndarray:
        pool, _ = self._ready()
        n = len(features)
        per = max(1, min(pool.max_tokens, -(-n // pool.size)))
        jobs = [(features[i : i + per], len(features[i : i + per]), 0) for i in range(0, n, per)]
        return np.concatenate(self._map(jobs))

    def _classify_blocking(self, items: list[bytes]) -> list[Tensor]:
        assert self._magika is not None
        labels = magika_features.classify(items, self._magika, self._scores)
        return magika_features.label_tensors(labels)

    # -- OIP v2 --------------------------------------------------------------------------

    def inputs(self) -> list[TensorSpec]:
        if self.spec.task is Task.EMBEDDING:
            return [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]
        return [TensorSpec(CONTENT_INPUT, "BYTES", (-1,))]

    def outputs(self) -> list[TensorSpec]:
        if self.spec.task is Task.EMBEDDING:
            width = self.pool.output_width if self.pool is not None else -1
            return [TensorSpec("embedding", "FP32", (-1, width))]
        return list(magika_features.OUTPUT_SPECS)

    async def infer(self, inputs: list[Tensor]) -> list[Tensor]:
        if self.spec.task is Task.EMBEDDING:
            text = only_input(inputs, TEXT_INPUT, "BYTES", self.spec.name)
            emb = await self.embed([tensor_text(v) for v in text.data.reshape(-1)])
            return [Tensor("embedding", "FP32", emb.vectors)]
        content = only_input(inputs, CONTENT_INPUT, "BYTES", self.spec.name)
        items = [tensor_bytes(v) for v in content.data.reshape(-1)]
        check_batch(self.spec, len(items), "items")
        self._ready()
        result: list[Tensor] = await asyncio.to_thread(self._classify_blocking, items)
        return result


def _bert_job(batch: TokenBatch, lo: int, hi: int) -> tuple[np.ndarray, int, int]:
    """The engine's input for rows [lo, hi): ids, types, mask, trimmed to their longest."""
    seq = max(1, int(batch.mask[lo:hi].sum(axis=1).max()))
    payload = np.stack([batch.ids[lo:hi, :seq], batch.types[lo:hi, :seq], batch.mask[lo:hi, :seq]])
    return payload.astype(np.int32), hi - lo, seq
