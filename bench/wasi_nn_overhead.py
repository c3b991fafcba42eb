"""wasi-nn overhead: SmolLM2 generation through a wasi-nn GGML guest against raw
llama-cpp-python, same GGUF (the bundled ``smollm2`` model's), same threads, same run.

* raw: ``llama_cpp.Llama.create_completion(stream=True)``, greedy;
* guest: the ``wasi-nn-ggml`` guest (built from ``wasm-modules/``) under the wasm host,
  streaming with ``compute_single`` / ``get_output_single``, each token written to the
  guest's stdout and received by the host, greedy, same prompt and ``n-predict``.

Generation tokens/s is (tokens - 1) / (time of the last token - time of the first), so
prompt evaluation is not in it. Both sides alternate (raw, guest, raw, guest...) so
drift on a shared machine hits both; ``ratio`` is the median of the per-pair ratios
(robust to load that changes between pairs), ``ratio_of_medians`` the ratio of the two
medians. Prints one JSON line.
Run: ``python bench/wasi_nn_overhead.py [--runs 9] [--tokens 128] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama_cpp import Llama  # noqa: E402

from runtime.backends.wasm.build import build_guest  # noqa: E402
from runtime.backends.wasm.host import Sandbox, wasm_host  # noqa: E402
from runtime.backends.wasm.package import Preload  # noqa: E402
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from runtime.spec.model import ArtifactFormat, load_config  # noqa: E402

# Greedy decoding continues this well past --tokens without an end-of-sequence token.
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
CTX = 2048


def tokens_per_s(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    settings = Settings.from_env()
    config = load_config()
    spec = config.get("smollm2")
    assert spec is not None
    gguf = spec.artifact_path(ArtifactFormat.GGUF, config.base_dir)

    raw = Llama(
        str(gguf), n_ctx=CTX, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    host = wasm_host(settings)
    template = host.template(host.module(build_guest("wasi-nn-ggml", settings)), define_wasi_nn)
    nn = NnHost(
        [Preload.parse(f"default:GGML:CPU:{gguf}")],
        {"default": gguf},
        ggml_defaults={"ctx-size": CTX, "threads": args.threads},
    )
    guest_args = [
        "--stream",
        "--n-predict",
        str(args.tokens),
        "--temp",
        "0",
        "--repeat-penalty",
        "1",
    ]

    def run_raw() -> tuple[float, int, str]:
        stamps: list[float] = []
        text = []
        stream = raw.create_completion(
            PROMPT, max_tokens=args.tokens, temperature=0.0, repeat_penalty=1.0, stream=True
        )
        for chunk in stream:
            piece = chunk["choices"][0]["text"]  # type: ignore[index]
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
        return tokens_per_s(stamps), len(stamps), "".join(text)

    def run_guest() -> tuple[float, int, str]:
        stamps: list[float] = []
        text: list[bytes] = []

        def out(data: bytes) -> None:
            stamps.append(time.perf_counter())
            text.append(data)

        state = NnCall(nn, stdout=out)
        try:
            sandbox = Sandbox(args=guest_args, stdin=PROMPT.encode(), stdout=out, timeout_s=3600)
            result = template.run(sandbox, state)
        finally:
            state.close()
        assert result.exit_code == 0
        return tokens_per_s(stamps), len(stamps), b"".join(text).decode()

    run_raw(), run_guest()  # warm both (page cache, llama.cpp buffers)
    raw_rates, guest_rates = [], []
    for _ in range(args.runs):
        rate, n_raw, text_raw = run_raw()
        raw_rates.append(rate)
        rate, _, text_guest = run_guest()
        guest_rates.append(rate)
        if text_raw != text_guest or n_raw != args.tokens:
            raise SystemExit(f"the two sides differ: {text_raw!r} vs {text_guest!r}")
    raw_tps, guest_tps = statistics.median(raw_rates), statistics.median(guest_rates)
    pair_ratio = statistics.median(g / r for g, r in zip(guest_rates, raw_rates, strict=True))
    print(
        json.dumps(
            {
                "bench": "wasi_nn_overhead",
                "model": "smollm2 (SmolLM2-135M-Instruct Q4_1)",
                "threads": args.threads,
                "tokens": args.tokens,
                "runs": args.runs,
                "raw_tokens_per_s": round(raw_tps, 1),
                "wasi_nn_tokens_per_s": round(guest_tps, 1),
                "ratio": round(pair_ratio, 3),
                "ratio_of_medians": round(guest_tps / raw_tps, 3),
                "raw_all": [round(r, 1) for r in raw_rates],
                "wasi_nn_all": [round(r, 1) for r in guest_rates],
                "target": 0.95,
            }
        )
    )
    nn.close()
    raw.close()
    sys.stdout.flush()
    # Skip interpreter teardown: llama.cpp's and wasmtime's native threads are still
    # alive, and tearing the interpreter down under them can abort the process.
    os._exit(0)


if __name__ == "__main__":
    main()
