"""The ``onnx`` runtime: models under onnxruntime, on CPU or the CUDA execution provider.

Serves three tasks:

* ``embedding``: text -> tokenizer (``tokenizers``) -> encoder -> pooled, normalised
  vectors. A BERT-family model given only as safetensors gets an ONNX graph built once
  and cached (``runtime.backends.bert_onnx``).
* ``classify`` with ``preprocess: magika``: raw bytes -> Magika features -> scores ->
  label, as the ``magika`` package computes them (``runtime.backends.magika_features``).
* ``tensor``: OIP v2 tensors straight into the graph and out again.

``InferenceSession.run`` is thread-safe and releases the GIL, so calls run in a pool
of ``options.parallel`` threads, each run on ``threads / parallel`` of the replica's
threads. Texts to embed and contents to classify that arrive together run as one batch
(``runtime.backends.dynamic_batch``, window ``options.batch_window_ms``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from runtime.backends import bert_onnx, magika_features
from runtime.backends.dynamic_batch import DynamicBatcher
from runtime.backends.registry import LoadPhases, Runtime, check_batch
from runtime.backends.tensor_inputs import (
    CONTENT_INPUT,
    TEXT_INPUT,
    only_input,
    tensor_bytes,
    tensor_text,
)
from runtime.backends.text_batch import encode_texts
from runtime.errors import (
    BadInput,
    ConfigError,
    ModelNotReady,
    RuntimeFailure,
    RuntimeUnavailable,
)
from runtime.spec.artifacts import resolve_artifact
from runtime.spec.datatypes import from_onnx_type, numpy_dtype
from runtime.spec.model import ArtifactFormat, RuntimeName, Task
from runtime.spec.placement import Device
from runtime.spec.types import Embeddings, LoadReport, Tensor, TensorSpec

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    name = RuntimeName.ONNX

    _session: ort.InferenceSession | None = None
    _tokenizer: Tokenizer | None = None
    _magika: magika_features.MagikaConfig | None = None
    _pool: ThreadPoolExecutor | None = None
    _max_tokens: int = 512
    _embedder: DynamicBatcher[str, tuple[np.ndarray, int]] | None = None
    _classifier: DynamicBatcher[bytes, magika_features.MagikaLabel] | None = None

    @classmethod
    def supports_cuda(cls) -> bool:
        return "CUDAExecutionProvider" in ort.get_available_providers()

    async def load(self) -> LoadReport:
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(
            max_workers=self.spec.options.parallel, thread_name_prefix=f"onnx-{self.spec.name}"
        )
        report = await loop.run_in_executor(self._pool, self._load_blocking)
        opts = self.spec.options
        batching = {
            "executor": self._pool,
            "window": opts.batch_window_ms / 1000.0,
            "max_items": opts.max_batch,
            "concurrency": opts.parallel,
        }
        self._embedder = DynamicBatcher(self._embed_rows, **batching)  # type: ignore[arg-type]
        if self._magika is not None:
            self._classifier = DynamicBatcher(self._classify_labels, **batching)  # type: ignore[arg-type]
        return report

    def _load_blocking(self) -> LoadReport:
        phases = LoadPhases(self.device)
        model_path = self._model_file()
        if self.spec.tokenizer:
            tok_path = resolve_artifact(
                self.spec.tokenizer, self.base_dir, model=self.spec.name, field="tokenizer"
            )
            self._tokenizer = Tokenizer.from_file(str(tok_path))
            self._tokenizer.no_padding()
            self._tokenizer.no_truncation()
            self._max_tokens = self.spec.options.max_input_tokens or 512
        if self.spec.options.preprocess == "magika":
            self._magika = magika_features.load_magika_config(self._preprocess_config())
        phases.end("resolve")
        self._session = ort.InferenceSession(
            str(model_path), sess_options=self._session_options(), providers=self._providers()
        )
        phases.end("load")
        self._warm_up()
        phases.end("warmup")
        self.report = phases.report()
        return self.report

    def _model_file(self) -> Path:
        if ArtifactFormat.ONNX in self.spec.artifacts:
            return self.artifact(ArtifactFormat.ONNX)
        weights = self.artifact(ArtifactFormat.SAFETENSORS)
        if self.spec.task is not Task.EMBEDDING:
            raise ConfigError(
                f"model {self.spec.name!r}: the onnx runtime builds graphs from safetensors "
                "only for BERT-family embedding models; give an onnx artifact"
            )
        return bert_onnx.ensure_bert_onnx(
            weights.parent, self.settings.artifact_cache, name=self.spec.name
        )

    def _preprocess_config(self) -> Path:
        ref = self.spec.options.preprocess_config
        if ref is None:
            return self.artifact(ArtifactFormat.ONNX).parent / "config.min.json"
        return resolve_artifact(
            ref, self.base_dir, model=self.spec.name, field="options.preprocess_config"
        )

    def _session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The replica's threads shared out among the runs at once (options.parallel).
        # One sentence is too small to split across threads well, but requests that
        # arrive together run as one batch (dynamic_batch), which does.
        threads = self.settings.threads(self.spec.options.threads)
        opts.intra_op_num_threads = max(1, threads // self.spec.options.parallel)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # onnxruntime's pool threads spin after each run waiting for more work; in a
        # server that steals the cores the event loop needs to answer and read the next
        # request. Let them sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _providers(self) -> list[str]:
        if self.device == Device.CUDA:
            if not self.supports_cuda():
                raise RuntimeUnavailable(
                    "device cuda asked for, but this onnxruntime build has no "
                    "CUDAExecutionProvider (install onnxruntime-gpu)"
                )
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _warm_up(self) -> None:
        if self.spec.task is Task.EMBEDDING:
            self._embed_blocking(["warm up"])
        elif self._magika is not None:
            self._classify_blocking([b"#!/bin/sh\necho warm up\n" * 4])

    async def unload(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Let calls in flight finish before the session goes away.
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        self._session = None
        self._tokenizer = None

    async def _run(self, func: Any, *args: Any) -> Any:
        if self._pool is None or self._session is None:
            raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    # -- embeddings ---------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Embeddings:
        if self.spec.task is not Task.EMBEDDING:
            return await super().embed(texts)
        check_batch(self.spec, len(texts), "inputs")
        if self._embedder is None or self._session is None:
            raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
        rows = await self._embedder.submit(texts)
        return Embeddings(
            vectors=np.stack([v for v, _ in rows]), prompt_tokens=sum(n for _, n in rows)
        )

    def _embed_rows(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """One (vector, tokens) per text: what the batcher hands back to each request."""
        vectors, mask = self._encode(texts)
        return list(zip(vectors, (int(n) for n in mask.sum(1)), strict=True))

    def _embed_blocking(self, texts: list[str]) -> Embeddings:
        vectors, mask = self._encode(texts)
        return Embeddings(vectors=vectors, prompt_tokens=int(mask.sum()))

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised float32 vectors ``[n, dim]`` and the attention mask."""
        assert self._tokenizer is not None and self._session is not None
        batch = encode_texts(
            self._tokenizer,
            texts,
            limit=self._max_tokens,
            truncate=self.spec.options.truncate,
            model=self.spec.name,
        )
        ids, mask, types = batch.ids, batch.mask, batch.types
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        names = {i.name for i in self._session.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in names}
        outputs = {o.name for o in self._session.get_outputs()}
        try:
            if "sentence_embedding" in outputs:
                (vectors,) = self._session.run(["sentence_embedding"], feeds)
            else:
                (hidden,) = self._session.run([self._session.get_outputs()[0].name], feeds)
                weights = mask[:, :, None].astype(np.float32)
                pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
                vectors = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        except ort.capi.onnxruntime_pybind11_state.Fail as exc:  # type: ignore[attr-defined]
            raise RuntimeFailure(f"onnxruntime failed on model {self.spec.name!r}: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32), mask

    # -- OIP v2 tensors -------------------------------------------------------------

    def inputs(self) -> list[TensorSpec]:
        if self.spec.task is Task.EMBEDDING:
            return [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]
        if self._magika is not None:
            return [TensorSpec(CONTENT_INPUT, "BYTES", (-1,)), *self._graph_specs(inputs=True)]
        return self._graph_specs(inputs=True)

    def outputs(self) -> list[TensorSpec]:
        if self.spec.task is Task.EMBEDDING:
            return [TensorSpec("embedding", "FP32", (-1, -1))]
        if self._magika is not None:
            return [*magika_features.OUTPUT_SPECS, *self._graph_specs(inputs=False)]
        return self._graph_specs(inputs=False)

    def _graph_specs(self, *, inputs: bool) -> list[TensorSpec]:
        if self._session is None:
            return []
        args = self._session.get_inputs() if inputs else self._session.get_outputs()
        return [
            TensorSpec(a.name, from_onnx_type(a.type), tuple(_dim(d) for d in a.shape))
            for a in args
        ]

    async def infer(self, inputs: list[Tensor]) -> list[Tensor]:
        if self.spec.task is Task.EMBEDDING:
            text = only_input(inputs, TEXT_INPUT, "BYTES", self.spec.name)
            emb = await self.embed([tensor_text(v) for v in text.data.reshape(-1)])
            return [Tensor("embedding", "FP32", emb.vectors)]
        if self._magika is not None and any(t.name == CONTENT_INPUT for t in inputs):
            content = only_input(inputs, CONTENT_INPUT, "BYTES", self.spec.name)
            items = [tensor_bytes(v) for v in content.data.reshape(-1)]
            check_batch(self.spec, len(items), "items")
            if self._classifier is None:
                raise ModelNotReady(f"model {self.spec.name!r} is not loaded")
            return magika_features.label_tensors(await self._classifier.submit(items))
        feeds = self._check_feeds(inputs)
        raw: list[Tensor] = await self._run(self._run_graph, feeds)
        return raw

    def _check_feeds(self, inputs: list[Tensor]) -> dict[str, np.ndarray]:
        assert self._session is not None
        expected = {a.name: a for a in self._session.get_inputs()}
        given = {t.name: t for t in inputs}
        unknown = sorted(set(given) - set(expected))
        missing = sorted(set(expected) - set(given))
        accepted = ", ".join(s.name for s in self.inputs())
        if unknown:
            raise BadInput(
                f"unknown input {unknown[0]!r}; model {self.spec.name!r} takes {accepted}"
            )
        if missing:
            raise BadInput(
                f"missing input {missing[0]!r}; model {self.spec.name!r} takes {accepted}"
            )
        feeds = {}
        for name, arg in expected.items():
            tensor = given[name]
            datatype = from_onnx_type(arg.type)
            if tensor.datatype != datatype:
                raise BadInput(f"input {name!r} must be {datatype}, got {tensor.datatype}")
            want = [_dim(d) for d in arg.shape]
            if len(want) != len(tensor.shape) or any(
                w != -1 and w != g for w, g in zip(want, tensor.shape, strict=True)
            ):
                raise BadInput(
                    f"input {name!r} must have shape {want} (-1: any), got {list(tensor.shape)}"
                )
            feeds[name] = tensor.data.astype(numpy_dtype(datatype), copy=False)
        return feeds

    def _run_graph(self, feeds: dict[str, np.ndarray]) -> list[Tensor]:
        assert self._session is not None
        try:
            values = self._session.run(None, feeds)
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,  # type: ignore[attr-defined]
            ort.capi.onnxruntime_pybind11_state.Fail,
        ) as exc:  # type: ignore[attr-defined]
            raise BadInput(f"model {self.spec.name!r} rejected the tensors: {exc}") from exc
        return [
            Tensor(o.name, from_onnx_type(o.type), np.asarray(v))
            for o, v in zip(self._session.get_outputs(), values, strict=True)
        ]

    def _classify_blocking(self, items: list[bytes]) -> list[Tensor]:
        return magika_features.label_tensors(self._classify_labels(items))

    def _classify_labels(self, items: list[bytes]) -> list[magika_features.MagikaLabel]:
        config = self._magika
        assert config is not None and self._session is not None
        input_name = self._session.get_inputs()[0].name

        def scores(features: np.ndarray) -> np.ndarray:
            assert self._session is not None
            (out,) = self._session.run(None, {input_name: features})
            return np.asarray(out)

        return magika_features.classify(items, config, scores)


def _dim(d: Any) -> int:
    return d if isinstance(d, int) else -1
