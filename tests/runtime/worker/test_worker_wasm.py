"""Real worker processes serving WASM model packages (the wasm runtime): a wasi-nn GGML
guest and Spin components over the same HTTP contract as any model, and hostile guests
that must not take the worker down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from runtime.backends.wasm.build import build_guest, guests_dir
from runtime.errors import GuestLinkError
from runtime.settings import Settings
from runtime.spec.model import load_config
from tests.conftest import WorkerProcess, running_worker
from tests.runtime.worker.conftest import chat_against_raw, client

pytestmark = pytest.mark.slow

PACKAGES = guests_dir() / "packages" / "models.yaml"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _worker(model: str, logs: Path, config: Path = PACKAGES) -> Iterator[WorkerProcess]:
    return running_worker(model, logs, "--config", str(config), ready_timeout=600)


@pytest.fixture(scope="module")
def wasi_nn_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _worker("smollm2-wasi-nn", worker_logs)


@pytest.fixture(scope="module")
def spin_chat_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _worker("smollm2-spin", worker_logs)


@pytest.fixture(scope="module")
def spin_embed_worker(worker_logs: Path) -> Iterator[WorkerProcess]:
    yield from _worker("minilm-spin", worker_logs)


def test_wasi_nn_chat_matches_raw_llama_cpp(wasi_nn_worker: WorkerProcess, raw_llama) -> None:  # type: ignore[no-untyped-def]
    chat_against_raw(wasi_nn_worker, "smollm2-wasi-nn", QUESTION, raw_llama)


def test_wasi_nn_streams_token_by_token(wasi_nn_worker: WorkerProcess) -> None:
    stream = client(wasi_nn_worker).completions.create(
        model="smollm2-wasi-nn",
        prompt="Once upon a time",
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
    assert len(chunks) > 3
    whole = client(wasi_nn_worker).completions.create(
        model="smollm2-wasi-nn", prompt="Once upon a time", max_tokens=16, temperature=0
    )
    assert "".join(chunks) == whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"


def test_wasi_nn_stop_sequence(wasi_nn_worker: WorkerProcess) -> None:
    full = client(wasi_nn_worker).completions.create(
        model="smollm2-wasi-nn", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0
    )
    text = full.choices[0].text
    stop = text.strip()[:2]
    cut = client(wasi_nn_worker).completions.create(
        model="smollm2-wasi-nn", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_wasi_nn_serves_concurrent_requests(wasi_nn_worker: WorkerProcess) -> None:
    async def one(c: httpx.AsyncClient, i: int) -> int:
        r = await c.post(
            "/v1/completions",
            json={"model": "smollm2-wasi-nn", "prompt": f"Number {i}:", "max_tokens": 4},
            timeout=120,
        )
        return r.status_code

    async def all_of() -> list[int]:
        async with httpx.AsyncClient(base_url=wasi_nn_worker.url) as c:
            return await asyncio.gather(*(one(c, i) for i in range(4)))

    assert asyncio.run(all_of()) == [200] * 4


def test_spin_guest_answers_chat(spin_chat_worker: WorkerProcess) -> None:
    got = client(spin_chat_worker).chat.completions.create(
        model="smollm2-spin",
        messages=QUESTION,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    text = got.choices[0].message.content or ""
    assert text and text == text.strip() and "<|im_end|>" not in text
    assert got.usage is not None and got.usage.completion_tokens > 0


def test_spin_guest_embeddings(spin_embed_worker: WorkerProcess) -> None:
    got = client(spin_embed_worker).embeddings.create(
        model="minilm-spin",
        input=["a cat sits on the mat", "a kitten on a rug", "stock prices fell"],
    )
    vectors = np.array([d.embedding for d in got.data], np.float32)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert got.usage.prompt_tokens > 0


# Hostile guests behind a worker ------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_worker(
    tmp_path_factory: pytest.TempPathFactory, worker_logs: Path
) -> Iterator[WorkerProcess]:
    root = tmp_path_factory.mktemp("hostile")
    package = root / "probe"
    package.mkdir()
    (package / "weights.txt").write_text("model data\n")
    (package / "edgeinfer-wasm.yaml").write_text(
        yaml.safe_dump(
            {
                "abi": "wasi-nn",
                "guest": "build:probe",
                "args": ["stdin"],
                "limits": {"timeout_s": 2, "max_memory_mib": 32},
            }
        )
    )
    config = root / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "probe",
                        "task": "completion",
                        "artifacts": {"wasm": "probe"},
                        "runtimes": ["wasm"],
                    }
                ]
            }
        )
    )
    yield from _worker("probe", worker_logs, config)


def _complete(worker: WorkerProcess, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v1/completions", json={"model": "probe", "prompt": prompt}, timeout=60
    )


def _served_normally(worker: WorkerProcess) -> None:
    r = _complete(worker, "read /model/weights.txt")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "read /model/weights.txt: model data\n"


def test_endless_loop_is_a_504(hostile_worker: WorkerProcess) -> None:
    r = _complete(hostile_worker, "loop")
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    _served_normally(hostile_worker)


def test_memory_bomb_is_a_clear_error(hostile_worker: WorkerProcess) -> None:
    r = _complete(hostile_worker, "membomb")
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "guest_out_of_memory"
    assert "32 MiB" in r.json()["error"]["message"]
    _served_normally(hostile_worker)


def test_trap_reports_its_message(hostile_worker: WorkerProcess) -> None:
    r = _complete(hostile_worker, "trap")
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "guest_trap"
    assert "unreachable" in r.json()["error"]["message"]
    _served_normally(hostile_worker)


def test_writing_outside_is_refused(hostile_worker: WorkerProcess) -> None:
    for path in ("/model/weights.txt", "/model/new.txt", "/tmp/x", "../x"):
        r = _complete(hostile_worker, f"write {path}")
        assert r.status_code == 500, r.text
        assert "exited with code 1" in r.json()["error"]["message"]
    _served_normally(hostile_worker)


def test_missing_import_fails_at_load(tmp_path: Path) -> None:
    import wasmtime

    from runtime.backends.registry import create_runtime

    package = tmp_path / "evil"
    package.mkdir()
    (package / "evil.wasm").write_bytes(
        wasmtime.wat2wasm(
            '(module (import "wasi_ephemeral_nn" "open_socket" (func (result i32)))'
            ' (memory (export "memory") 1) (func (export "_start")))'
        )
    )
    (package / "edgeinfer-wasm.yaml").write_text("abi: wasi-nn\nguest: evil.wasm\n")
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - {name: evil, task: completion, artifacts: {wasm: evil}, runtimes: [wasm]}\n"
    )
    cfg = load_config(config)
    runtime = create_runtime(
        cfg.models[0], settings=Settings(state_dir=tmp_path / "state"), base_dir=cfg.base_dir
    )
    with pytest.raises(GuestLinkError, match="wasi_ephemeral_nn::open_socket"):
        asyncio.run(runtime.load())


def test_the_probe_guest_is_built(hostile_worker: WorkerProcess) -> None:
    assert build_guest("probe", Settings.from_env()).is_file()
