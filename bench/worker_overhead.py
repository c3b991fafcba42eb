"""Worker overhead: the worker over HTTP against the raw library, same model, same threads.

* generation: SmolLM2 tokens/s streamed through ``edgeinfer worker`` (SSE, token by
  token, read by an HTTP client) against ``llama_cpp.Llama.create_completion`` in this
  process, greedy, same prompt, same ``max_tokens``, same thread count;
* embeddings: MiniLM embeddings/s through the worker (``/v1/embeddings``, batches of 32,
  base64 as the openai client asks) against onnxruntime + tokenizers in this process
  on the same ONNX file with the same threads.

Both sides are measured in the same run, interleaved (raw, worker, raw, worker...) so
drift on a shared machine hits both; the medians are compared. Prints one JSON line.
Run: ``python bench/worker_overhead.py [--runs 15] [--tokens 128] [--device cpu|cuda]
[--part all|generation|embeddings]``. With ``--device cuda`` both sides run on the GPU
(llama.cpp offloading the model's ``options.gpu_layers``; onnxruntime's CUDA provider),
as ``bench/gpu_check.py`` runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.backends.bert_onnx import ensure_bert_onnx  # noqa: E402
from runtime.scaling.replica import free_port  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.artifacts import resolve_artifact  # noqa: E402
from runtime.spec.model import ArtifactFormat, load_config  # noqa: E402

# A prompt greedy decoding continues well past --tokens without an end-of-sequence token,
# so both sides generate exactly --tokens tokens (checked below).
JSON = {"Content-Type": "application/json"}
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
SENTENCES = [
    f"Sentence number {i} talks about {topic} in a few plain words."
    for i, topic in enumerate(
        ["the sea", "mountains", "databases", "music", "cooking", "trains", "the moon", "bees"] * 4
    )
]


def start_worker(model: str, device: str = "cpu") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "runtime.worker", "--model", model),
            *("--device", device, "--port", str(port)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker {model} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"worker {model} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def interleave(
    runs: int, raw: Callable[[], float], worker: Callable[[], float]
) -> dict[str, float]:
    """Alternate the two sides ``runs`` times. Reports the ratio of the medians, and
    the quartiles of the per-round ratios to show how noisy the machine was."""
    raw_rates, worker_rates = [], []
    for _ in range(runs):
        raw_rates.append(raw())
        worker_rates.append(worker())
    r, w = statistics.median(raw_rates), statistics.median(worker_rates)
    q1, _, q3 = statistics.quantiles(
        [b / a for a, b in zip(raw_rates, worker_rates, strict=True)], n=4
    )
    return {
        "raw_per_s": round(r, 2),
        "worker_per_s": round(w, 2),
        "ratio": round(w / r, 4),
        "round_ratio_q1": round(q1, 4),
        "round_ratio_q3": round(q3, 4),
    }


def bench_generation(runs: int, tokens: int, threads: int, device: str) -> dict[str, float]:
    from llama_cpp import Llama

    config = load_config()
    spec = config.get("smollm2")
    assert spec is not None
    path = spec.artifact_path(ArtifactFormat.GGUF, config.base_dir)
    llm = Llama(
        str(path),
        n_ctx=spec.options.context_length,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=min(spec.options.batch_size, spec.options.context_length),
        n_gpu_layers=spec.options.gpu_layers if device == "cuda" else 0,  # as the worker
        verbose=False,
    )
    proc, url = start_worker("smollm2", device)
    conn = HTTPConnection(url.removeprefix("http://"), timeout=120)
    body = json.dumps(
        {
            "model": "smollm2",
            "prompt": PROMPT,
            "max_tokens": tokens,
            "temperature": 0,
            "repeat_penalty": 1.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    def raw() -> float:
        start = time.perf_counter()
        finish = None
        llm.reset()  # as the worker does (options.prompt_cache is off by default)
        for chunk in llm.create_completion(
            PROMPT, max_tokens=tokens, temperature=0, repeat_penalty=1.0, stream=True
        ):
            finish = chunk["choices"][0]["finish_reason"] or finish
        elapsed = time.perf_counter() - start
        if finish != "length":
            raise SystemExit(f"raw llama.cpp stopped early ({finish})")
        return tokens / elapsed

    def worker() -> float:
        nonlocal conn
        # A new connection each round: on a loaded machine the raw side's turn can
        # outlast the worker's keep-alive (5 s), and the kept one is then closed.
        conn.close()
        conn = HTTPConnection(url.removeprefix("http://"), timeout=120)
        start = time.perf_counter()
        used = 0
        conn.request("POST", "/v1/completions", body, JSON)
        response = conn.getresponse()
        if response.status != 200:
            raise SystemExit(f"worker answered {response.status}: {response.read()!r}")
        for line in response:  # one SSE line at a time, as a streaming client reads
            if line.startswith(b"data: {") and b'"usage"' in line:
                used = json.loads(line[6:])["usage"]["completion_tokens"]
        elapsed = time.perf_counter() - start
        if used != tokens:
            raise SystemExit(f"worker generated {used} tokens, expected {tokens}")
        return tokens / elapsed

    try:
        raw(), worker()  # warm both
        return interleave(runs, raw, worker)
    finally:
        stop(proc)
        llm.close()


def bench_embeddings(runs: int, threads: int, device: str) -> dict[str, float]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    config = load_config()
    spec = config.get("minilm")
    assert spec is not None and spec.tokenizer
    weights = spec.artifact_path(ArtifactFormat.SAFETENSORS, config.base_dir)
    settings = Settings.from_env()
    model = ensure_bert_onnx(weights.parent, settings.artifact_cache, name="minilm")
    tok = Tokenizer.from_file(
        str(resolve_artifact(spec.tokenizer, config.base_dir, model="minilm", field="tok"))
    )
    tok.enable_padding()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # The worker's session options (runtime/backends/onnx.py). Spinning pool threads
    # left over from one side would also steal the cores from the other side's turn.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model), opts, providers=providers)
    proc, url = start_worker("minilm", device)
    conn = HTTPConnection(url.removeprefix("http://"), timeout=60)
    body = json.dumps({"model": "minilm", "input": SENTENCES, "encoding_format": "base64"})

    def raw() -> float:
        start = time.perf_counter()
        enc = tok.encode_batch(SENTENCES)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        session.run(["sentence_embedding"], feeds)
        return len(SENTENCES) / (time.perf_counter() - start)

    def worker() -> float:
        start = time.perf_counter()
        conn.request("POST", "/v1/embeddings", body, JSON)
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200 or len(data["data"]) != len(SENTENCES):
            raise SystemExit(f"worker answered {response.status}: {data}")
        return len(SENTENCES) / (time.perf_counter() - start)

    try:
        for _ in range(3):
            raw(), worker()
        # One batch per side per round: finer interleaving than generation needs, since
        # a batch takes ~0.1 s and the machine's speed drifts on that scale.
        return interleave(runs * 4, raw, worker)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--part", choices=("all", "generation", "embeddings"), default="all")
    args = parser.parse_args()
    threads = os.cpu_count() or 1  # what the worker uses when options.threads is unset
    result: dict[str, object] = {
        "bench": "worker_overhead",
        "device": args.device,
        "threads": threads,
        "runs": args.runs,
        "target_ratio": 0.95,
    }
    ratios = []
    if args.part in ("all", "generation"):
        generation = bench_generation(args.runs, args.tokens, threads, args.device)
        result["generation_tokens_per_s"] = generation
        ratios.append(generation["ratio"])
    if args.part in ("all", "embeddings"):
        embeddings = bench_embeddings(args.runs, threads, args.device)
        result["embeddings_per_s"] = embeddings
        ratios.append(embeddings["ratio"])
    result["pass"] = all(r >= 0.95 for r in ratios)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
