"""The core budget (runtime/scaling/cores.py) through a real ``edgeinfer serve`` with
real workers: each replica takes every core, so models take turns.

CI's failure (tests/gateway/test_schemathesis.py): after the models had taken turns, a
request for magika at zero waited 60 s and got a 504 while another model's replica sat
idle on the cores. Here the same turns are taken on purpose with correct requests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.scaling.cores import host_cores
from tests.gateway.served import ADMIN_KEY, API_KEY, ServedGateway, bundled_models, start_gateway

pytestmark = pytest.mark.slow

USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INFER = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["x = 1"]}]}


def wide(model: dict[str, Any], name: str) -> dict[str, Any]:
    """``model`` natively, named ``name``, one replica of every core at most."""
    return {
        **model,
        "name": name,
        "runtimes": [r for r in model["runtimes"] if r != "wasm"],
        "options": {**model.get("options", {}), "threads": host_cores()},
        "scaling": {**model["scaling"], "timeout": "60s"},
    }


@pytest.fixture
def served(tmp_path: Path) -> Any:
    minilm, magika = bundled_models("minilm", "magika")
    # Config order is the order the autoscaler's loop visits the pools in.
    models = [wide(minilm, "minilm"), wide(magika, "magika"), wide(magika, "magika-b")]
    gw = start_gateway(tmp_path, models)
    yield gw
    gw.stop()


def test_a_model_at_zero_gets_the_cores_after_the_others_took_turns(
    served: ServedGateway,
) -> None:
    """Before the fix: magika, drained for minilm but its window still wanting a
    replica, drained minilm's idle replica in turn; minilm, visited first, came back on
    the freed cores, and the budget still counted its drain as cores on their way back,
    so for magika-b, at zero with a request waiting, it drained nobody (CI's 504)."""
    gw = served
    r = httpx.post(f"{gw.url}/v2/models/magika/infer", json=INFER, headers=USER, timeout=60)
    assert r.status_code == 200, r.text
    embed = {"model": "minilm", "input": "turns"}
    r = httpx.post(f"{gw.url}/v1/embeddings", json=embed, headers=USER, timeout=60)
    assert r.status_code == 200, r.text  # magika's idle replica was drained for it
    time.sleep(5)  # a few autoscaler ticks with both windows still wanting a replica
    r = httpx.post(f"{gw.url}/v2/models/magika-b/infer", json=INFER, headers=USER, timeout=90)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{gw.output()[-3000:]}"
    assert r.json()["model_name"] == "magika-b"
    assert gw.alive()
