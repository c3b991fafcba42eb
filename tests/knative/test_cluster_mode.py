"""The cluster as the rest of edgeinfer sees it, against a real kube-apiserver: the
gateway in cluster mode routing by the Services' stored status, and the manager's plan
(from the clusters' Node objects) deciding cluster and tier."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from knative.apply import apply_manifests
from knative.kube import connect
from knative.status import read_status
from runtime.spec.model import load_config
from tests.knative.cluster_helpers import (
    MAGIKA,
    MINILM,
    add_node,
    manifests,
    set_ready,
    setup,
)
from tests.knative.conftest import write_config

pytestmark = pytest.mark.slow


def test_gateway_in_cluster_mode_routes_by_knative_status(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    """``serve --cluster``: Service URLs come from the real API server's stored status;
    the pods behind them are real workers on loopback (no kubelet runs here)."""
    import httpx

    from gateway.server import build_gateway
    from runtime.settings import Settings
    from tests.conftest import start_worker
    from tests.gateway.conftest import FakeClock, GatewayServer

    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    gpu_pod = start_worker("magika", tmp_path)
    cpu_pod = start_worker("magika", tmp_path)
    set_ready(cluster, "magika-onnx-cuda", url=gpu_pod.url)
    set_ready(cluster, "magika-onnx-cpu", url=cpu_pod.url)
    clock = FakeClock()
    app = build_gateway(cfg, Settings(state_dir=tmp_path / "state"), clock=clock, clusters=["core"])
    server = GatewayServer(app, clock)
    server.start()
    body = {
        "inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\n"]}]
    }
    try:

        def served() -> dict[str, int]:
            info = server.admin()["magika"]
            return {i["url"]: i["served"] for i in info["instances"]}

        # No Revision replica counts here and no answer yet: the primary counts as at
        # zero, so the warm bridge answers and the primary is woken.
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["shell"]
        assert served() == {gpu_pod.url: 0, cpu_pod.url: 1}
        server.wait_for(lambda: server.admin()["magika"]["cold_starts"] == 1, timeout=30)
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=body, timeout=30)
        assert r.status_code == 200
        assert served() == {gpu_pod.url: 1, cpu_pod.url: 1}
    finally:
        server.stop()
        gpu_pod.stop_cleanly()
        cpu_pod.stop_cleanly()


def test_the_managers_plan_decides_cluster_and_tier(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    """``edgeinfer plan --clusters --json`` (the manager, reading the clusters' nodes)
    feeds ``knative apply --plan``; the edge cluster gets no GPU tier even though the
    API server it names has a GPU node."""
    import json

    (tmp_path / "edge").mkdir()
    add_node(kubeconfig, "gpu-node-1", 1)
    add_node(kubeconfig, "cpu-node-1", 0)
    path = write_config(
        tmp_path,
        {
            "models": [MINILM, MAGIKA],
            "clusters": [
                {"name": "core", "kubeconfig": kubeconfig, "namespace": namespace},
                {
                    "name": "shop",
                    "kubeconfig": kubeconfig,
                    "namespace": namespace,
                    "labels": ["edge"],
                },
            ],
        },
    )
    runner = CliRunner()
    env = {"EDGEINFER_HOME": str(tmp_path / "home")}  # no stored profiles
    planned = runner.invoke(app, ["plan", "--config", str(path), "--clusters", "--json"], env=env)
    assert planned.exit_code == 0, planned.output
    plan = tmp_path / "plan.json"
    plan.write_text(planned.stdout)
    doc = json.loads(planned.stdout)
    tiers = [t for m in doc["models"] for t in m["tiers"]]
    assert all(not (t["cluster"] == "shop" and t["tier"].endswith("-cuda")) for t in tiers)
    applied = runner.invoke(
        app, ["knative", "apply", "--config", str(path), "--plan", str(plan), "--no-diff"]
    )
    assert applied.exit_code == 0, applied.output
    cluster = connect(load_config(path).clusters[0])
    rows = {(r.name, r.cluster) for r in read_status(cluster)}
    expected = {
        (f"{m['model']}-{t['tier']}", t["cluster"])
        for m in doc["models"]
        for t in m["tiers"]
        if t["cluster"] == "core"
    }
    assert rows == expected and rows
    # With only the edge site to place on, every model gets a CPU tier there.
    edge_only = write_config(
        tmp_path / "edge",
        {
            "models": [MINILM, MAGIKA],
            "clusters": [
                {
                    "name": "shop",
                    "kubeconfig": kubeconfig,
                    "namespace": namespace,
                    "labels": ["edge"],
                }
            ],
        },
    )
    planned = runner.invoke(
        app, ["plan", "--config", str(edge_only), "--clusters", "--json"], env=env
    )
    assert planned.exit_code == 0, planned.output
    edge_tiers = [t for m in json.loads(planned.stdout)["models"] for t in m["tiers"]]
    assert edge_tiers and all(
        t["cluster"] == "shop" and t["tier"].endswith("-cpu") for t in edge_tiers
    ), edge_tiers
