"""WASM cold start from zero through ``edgeinfer serve`` (the default), and of bare
guests in a fresh process (``--guests``).

**Through the gateway** (issue 14): one ``edgeinfer serve`` with ``minilm-engine`` and
``magika-engine`` (our engine in the WASM host) and, beside them in the same gateway,
the native ``minilm`` and ``magika`` (onnxruntime workers forked from the pre-imported
server). Every model starts at zero and goes back to zero after a 6 s window (grace and
retention 0). First each model is called once: for a WASM model that loads it into the
warm host (``first_load``: resolve, snapshot mapping, warm-up), for a native one it
spawns its first worker. Then, per round, each model at zero is called (``cold``: the
time from sending the request to the first byte of the answer, inference included),
then five more times warm (``warm``, median); then all wait until they are back at
zero. For a WASM model at zero the host is warm and the model resident without
instances (one parked in its snapshot's state), so its cold start spawns nothing and
faults no weight page in. Targets: cold first byte <= 15 ms minilm-engine, <= 30 ms
magika-engine.

Then (unless ``--no-chat``) SmolLM2's first token (``smollm2_first_token``): the
wasi-nn GGML guest (``smollm2-wasi-nn``) at zero in the warm host with its GGUF still
loaded (``weights resident``, target <= 100 ms) and, in a second gateway whose host has
a 16 MiB memory budget (every idle model unloaded), with its weights evicted; the
native llama.cpp ``smollm2`` from zero beside them. Each with its warm figure.

**Bare guests** (``--guests``): from nothing loaded to the first response of a guest, in
a fresh process each round, with the precompiled-module cache warm on disk.

Three guests:

* ``probe`` (no model): deserialize the precompiled module, link it (wasmtime
  ``InstancePre``), instantiate it in a fresh sandboxed store and run it to its first
  output. This is the cost of a WASM cold start when the host has the model loaded.
* ``wasi-nn-ggml`` with SmolLM2 (the bundled ``smollm2`` model's GGUF): the same
  phases, plus loading the model into the host (llama.cpp, one token decoded to
  allocate its buffers, as the worker does at load) before the guest runs, and a first
  call that evaluates a short prompt and generates one token.
* ``spin-llm-app`` (a 21 MB Python component): deserialize, link (with one check
  instantiation), instantiate and call ``handle`` once; its ``llm.infer`` import is
  answered by a host function that returns a fixed text, so the figure is the
  component's own cold start without model time.

Each round runs in a new Python process (so no engine, module or model is loaded),
after ``import`` of the wasm runtime, which is reported as its own phase. Medians of
``--rounds``. The budget (DESIGN.md) is 20 ms to the first response for a guest whose
model is already loaded. Prints one JSON line. Run: ``python bench/wasm_cold_start.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 20.0

# Runs in a fresh interpreter; prints one JSON object of phase durations in ms.
ROUND = r"""
import json, sys, time
t0 = time.perf_counter()
from runtime.settings import Settings
from runtime.backends.wasm.host import Sandbox, wasm_host
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn
from runtime.backends.wasm.package import Preload
guest, gguf = sys.argv[1], sys.argv[2]
ms = {"import": (time.perf_counter() - t0) * 1e3}
settings = Settings.from_env()

def mark(name, since):
    now = time.perf_counter()
    ms[name] = (now - since) * 1e3
    return now

t = time.perf_counter()
host = wasm_host(settings)
nn = NnHost([Preload.parse(f"default:GGML:CPU:{gguf}")] if gguf else [],
            {"default": gguf} if gguf else {}, ggml_defaults={"ctx-size": 512, "threads": 2})
if gguf:
    nn.graph("default").warm()
    t = mark("model_load", t)
t = mark("engine", t) if not gguf else time.perf_counter()
module = host.module(__import__("pathlib").Path(guest))
t = mark("deserialize", t)
template = host.template(module, define_wasi_nn)
t = mark("link", t)
first = []
def out(data):
    if not first:
        first.append(time.perf_counter())
args = ["--n-predict", "1", "--temp", "0"] if gguf else ["echo"]
state = NnCall(nn, stdout=out)
template.run(Sandbox(args=args, stdin=b"The capital of France is" if gguf else None,
                     stdout=out), state)
state.close()
ms["instantiate_and_first_call"] = (first[0] - t) * 1e3
print(json.dumps(ms), flush=True)
import os; os._exit(0)
"""

SPIN_ROUND = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from wasmtime import component as wc
from runtime.settings import Settings
from runtime.backends.wasm.component import ComponentTemplate
from runtime.backends.wasm.host import CallState, Sandbox, wasm_host
from runtime.backends.wasm.abi.spin import LLM_INTERFACE
ms = {"import": (time.perf_counter() - t0) * 1e3}
t = time.perf_counter()
host = wasm_host(Settings.from_env())
ms["engine"] = (time.perf_counter() - t) * 1e3

def record(**fields):
    r = wc.Record()
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r

def infer(store, model, prompt, params):  # no model: a fixed answer
    return record(text="ok", usage=record(prompt_token_count=1, generated_token_count=1))

t = time.perf_counter()
component = host.component(Path(sys.argv[1]))
ms["deserialize"] = (time.perf_counter() - t) * 1e3
t = time.perf_counter()
template = ComponentTemplate(host, component, {LLM_INTERFACE: {"infer": infer,
    "generate-embeddings": lambda store, model, texts: wc.Variant("model-not-supported")}})
ms["link"] = (time.perf_counter() - t) * 1e3
t = time.perf_counter()
request = json.dumps({"task": "completion", "model": "m", "prompt": "hi"})
result = template.call(Sandbox(), CallState(), "handle", request)
assert result.tag == "ok", result
ms["instantiate_and_first_call"] = (time.perf_counter() - t) * 1e3
print(json.dumps(ms), flush=True)
import os; os._exit(0)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guests", action="store_true", help="bare guests, not the gateway")
    parser.add_argument("--rounds", type=int, default=None, help="7 guests, 5 gateway")
    parser.add_argument("--no-chat", action="store_true", help="leave SmolLM2's first token out")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.guests:
        guests_main(args.rounds or 7)
    else:
        from bench.wasm_serve import serve_cold_starts, serve_first_tokens

        result = serve_cold_starts(args.rounds or 5)
        if not args.no_chat:
            result["smollm2_first_token"] = serve_first_tokens(args.rounds or 5)
        print(json.dumps(result))


def guests_main(rounds_n: int) -> None:
    from runtime.backends.wasm.build import build_guest
    from runtime.backends.wasm.host import WasmHost
    from runtime.settings import Settings
    from runtime.spec.model import ArtifactFormat, load_config

    settings = Settings.from_env()
    config = load_config()
    spec = config.get("smollm2")
    assert spec is not None
    gguf = spec.artifact_path(ArtifactFormat.GGUF, config.base_dir)
    names = ("probe", "wasi-nn-ggml", "spin-llm-app")
    guests = {name: build_guest(name, settings) for name in names}
    warm = WasmHost(settings)  # fills the precompiled cache on disk
    for name, path in guests.items():
        if name == "spin-llm-app":
            warm.component(path)
        else:
            warm.module(path)

    results: dict[str, dict[str, float]] = {}
    for name, path in guests.items():
        rounds: list[dict[str, float]] = []
        for _ in range(rounds_n):
            model = str(gguf) if name == "wasi-nn-ggml" else ""
            script = SPIN_ROUND if name == "spin-llm-app" else ROUND
            proc = subprocess.run(
                [sys.executable, "-c", script, str(path), model],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rounds.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        phases = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
        wasm = phases["deserialize"] + phases["link"] + phases["instantiate_and_first_call"]
        phases["wasm_cold_start"] = round(wasm, 2)
        results[name] = phases
    probe = results["probe"]["wasm_cold_start"]
    print(
        json.dumps(
            {
                "bench": "wasm_cold_start",
                "rounds": rounds_n,
                "unit": "ms",
                "target_ms": TARGET_MS,
                "probe": results["probe"],
                "wasi_nn_ggml_smollm2": results["wasi-nn-ggml"],
                "spin_component": results["spin-llm-app"],
                "cold_start_ms_model_loaded": probe,
                "ratio_to_target": round(probe / TARGET_MS, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
