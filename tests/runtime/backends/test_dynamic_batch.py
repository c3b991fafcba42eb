"""DynamicBatcher (runtime/backends/dynamic_batch.py): with a FAKE model function that
records the batches it gets (and can be held mid-run), then with real MiniLM under
onnxruntime."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtime.backends.dynamic_batch import DynamicBatcher
from runtime.errors import BadInput

HOURS = 3600.0  # a window no test waits out: anything that waits for it hangs the test


class FakeModel:
    """A FAKE model: doubles numbers, records each call's inputs, fails on negative
    input, and holds a call while ``gate`` is clear."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.calls.append(list(items))
        self.entered.set()
        self.gate.wait(30)
        if any(x < 0 for x in items):
            raise BadInput(f"negative input in {items}")
        return [2 * x for x in items]


def batcher(model: FakeModel, pool: ThreadPoolExecutor, **kw: float) -> DynamicBatcher[int, int]:
    args = {"window": HOURS, "max_items": 100, "concurrency": 1, **kw}
    return DynamicBatcher(
        model,
        executor=pool,
        window=args["window"],
        max_items=int(args["max_items"]),
        concurrency=int(args["concurrency"]),
    )


def test_a_lone_request_runs_at_once_even_with_a_long_window() -> None:
    async def scenario() -> None:
        model = FakeModel()
        with ThreadPoolExecutor(1) as pool:
            b = batcher(model, pool)
            assert await asyncio.wait_for(b.submit([1, 2]), 30) == [2, 4]
            assert await asyncio.wait_for(b.submit([3]), 30) == [6]
        assert model.calls == [[1, 2], [3]]

    asyncio.run(scenario())


def test_requests_arriving_during_a_run_go_together_in_the_next_batch() -> None:
    async def scenario() -> None:
        model = FakeModel()
        with ThreadPoolExecutor(1) as pool:
            b = batcher(model, pool, window=0.0)
            model.gate.clear()
            first = asyncio.ensure_future(b.submit([1]))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)
            rest = [asyncio.ensure_future(b.submit([10 + i])) for i in range(5)]
            await asyncio.sleep(0)
            model.gate.set()
            assert await asyncio.wait_for(first, 30) == [2]
            assert await asyncio.wait_for(asyncio.gather(*rest), 30) == [
                [20 + 2 * i] for i in range(5)
            ]
        assert model.calls == [[1], [10, 11, 12, 13, 14]]
        assert (b.batches, b.batched_requests) == (2, 6)

    asyncio.run(scenario())


def test_under_load_a_batch_waits_for_the_window_or_max_items() -> None:
    async def scenario() -> None:
        model = FakeModel()
        with ThreadPoolExecutor(1) as pool:
            b = batcher(model, pool, window=HOURS, max_items=3)
            model.gate.clear()
            lone = asyncio.ensure_future(b.submit([0]))  # nothing running: starts at once
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)
            pair = [asyncio.ensure_future(b.submit([i])) for i in (1, 2)]
            await asyncio.sleep(0)
            model.gate.set()
            assert await asyncio.wait_for(asyncio.gather(lone, *pair), 30) == [[0], [2], [4]]
            assert model.calls == [[0], [1, 2]]  # the last batch held two requests
            # Now under load: one request waits (the window is hours)...
            late = asyncio.ensure_future(b.submit([7]))
            await asyncio.sleep(0.05)
            assert not late.done() and len(model.calls) == 2
            # ...until max_items inputs wait.
            more = asyncio.ensure_future(b.submit([8, 9]))
            assert await asyncio.wait_for(asyncio.gather(late, more), 30) == [[14], [16, 18]]
        assert model.calls[-1] == [7, 8, 9]

    asyncio.run(scenario())


def test_a_bad_request_fails_alone_and_its_batch_neighbours_are_answered() -> None:
    async def scenario() -> None:
        model = FakeModel()
        with ThreadPoolExecutor(1) as pool:
            b = batcher(model, pool, window=0.0)
            model.gate.clear()
            first = asyncio.ensure_future(b.submit([1]))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)
            good = asyncio.ensure_future(b.submit([2]))
            bad = asyncio.ensure_future(b.submit([-1]))
            also = asyncio.ensure_future(b.submit([3]))
            await asyncio.sleep(0)
            model.gate.set()
            assert await asyncio.wait_for(first, 30) == [2]
            assert await asyncio.wait_for(good, 30) == [4]
            with pytest.raises(BadInput, match=r"negative input in \[-1\]"):
                await asyncio.wait_for(bad, 30)
            assert await asyncio.wait_for(also, 30) == [6]

    asyncio.run(scenario())


def test_a_cancelled_request_is_left_out_of_the_batch() -> None:
    async def scenario() -> None:
        model = FakeModel()
        with ThreadPoolExecutor(1) as pool:
            b = batcher(model, pool, window=0.0)
            model.gate.clear()
            first = asyncio.ensure_future(b.submit([1]))
            await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)
            gone = asyncio.ensure_future(b.submit([2]))
            kept = asyncio.ensure_future(b.submit([3]))
            await asyncio.sleep(0)
            gone.cancel()
            model.gate.set()
            await asyncio.wait_for(first, 30)
            assert await asyncio.wait_for(kept, 30) == [6]
        assert model.calls == [[1], [3]]

    asyncio.run(scenario())


@pytest.mark.slow
def test_minilm_requests_that_arrive_together_share_a_batch_and_keep_their_vectors() -> None:
    from runtime.backends.onnx import OnnxRuntime
    from runtime.settings import Settings
    from runtime.spec.model import load_config
    from runtime.spec.placement import Device

    sentences = [f"Sentence {i} is about {w}." for i, w in enumerate(["tea", "rain", "jazz"] * 8)]

    async def scenario() -> None:
        config = load_config()
        spec = config.get("minilm")
        assert spec is not None
        rt = OnnxRuntime(spec, device=Device.CPU, settings=Settings(), base_dir=config.base_dir)
        await rt.load()
        try:
            alone = [(await rt.embed([s])) for s in sentences]
            assert rt._embedder is not None
            before = rt._embedder.batches
            together = await asyncio.gather(*(rt.embed([s]) for s in sentences))
            assert rt._embedder.batches - before < len(sentences)
            for a, t in zip(alone, together, strict=True):
                assert t.prompt_tokens == a.prompt_tokens
                assert np.allclose(t.vectors, a.vectors, atol=1e-5)
            assert not np.allclose(together[0].vectors, together[1].vectors, atol=1e-3)
        finally:
            await rt.unload()

    asyncio.run(scenario())
