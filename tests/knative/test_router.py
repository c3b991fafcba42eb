"""The gateway in cluster mode: the bridge rule as a table, then a real gateway routing
to real workers (standing in for the pods behind two Knative Services)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app import Gateway
from gateway.auth import Authenticator
from gateway.config import gateway_config
from knative.router import ClusterRouter, TierView, route
from knative.status import ServiceStatus
from runtime.errors import BadInput
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import load_config
from tests.gateway.conftest import FakeClock, GatewayServer


def view(
    name: str, role: str, *, url: bool = True, ready: bool = True, n: int | None = 1
) -> TierView:
    return TierView(name, name, role, f"http://{name}.ns.svc" if url else None, ready, n)


P, B = "primary", "bridge"


@pytest.mark.parametrize(
    ("primary", "bridges", "last_answer", "target", "wake"),
    [
        # Primary running: it answers.
        (view("gpu", P, n=1), [view("cpu", B)], None, "gpu", None),
        # Primary at zero, warm bridge: bridge answers, primary is woken.
        (view("gpu", P, n=0), [view("cpu", B)], None, "cpu", "gpu"),
        # Primary at zero, bridge at zero too: primary (Knative's activator queues).
        (view("gpu", P, n=0), [view("cpu", B, n=0)], None, "gpu", None),
        # Replicas unknown: cold if it has not answered within idle_to_zero (100 s).
        (view("gpu", P, n=None), [view("cpu", B)], None, "cpu", "gpu"),
        (view("gpu", P, n=None), [view("cpu", B)], 950.0, "gpu", None),
        (view("gpu", P, n=None), [view("cpu", B)], 850.0, "cpu", "gpu"),
        # Bridge replicas unknown count as warm (it is kept at min-scale >= 1).
        (view("gpu", P, n=0), [view("cpu", B, n=None)], None, "cpu", "gpu"),
        # Primary not Ready (e.g. a bad revision): a Ready bridge answers.
        (view("gpu", P, ready=False), [view("cpu", B)], None, "cpu", None),
        # No primary Service at all: the bridge.
        (None, [view("cpu", B)], None, "cpu", None),
        # Primary without a URL yet and no bridge: nothing to route to.
        (view("gpu", P, url=False), [], None, None, None),
        # No bridge: primary, even when cold.
        (view("gpu", P, n=0), [], None, "gpu", None),
    ],
)
def test_bridge_rule(
    primary: TierView | None,
    bridges: list[TierView],
    last_answer: float | None,
    target: str | None,
    wake: str | None,
) -> None:
    decision = route(primary, bridges, last_answer=last_answer, now=1000.0, idle_to_zero=100.0)
    assert (decision.target.name if decision.target else None) == target, decision.reason
    assert (decision.wake.name if decision.wake else None) == wake


def test_https_urls_are_not_routed() -> None:
    status = ServiceStatus(
        "c",
        "Service",
        "m-llama-cuda",
        "m",
        "llama-cuda",
        "primary",
        "True",
        "",
        "https://m.example.com",
        None,
        "m-00001",
        "1/1",
    )
    cluster = ClusterSpec(name="c", route_via="url")
    assert TierView.of(status, cluster).url is None
    local = ClusterSpec(name="c")
    status2 = ServiceStatus(
        "c",
        "Service",
        "m-llama-cuda",
        "m",
        "llama-cuda",
        "primary",
        "True",
        "",
        "https://m.example.com",
        "http://m.ns.svc.cluster.local",
        "m-00001",
        "-",
    )
    assert TierView.of(status2, local).url == "http://m.ns.svc.cluster.local"


MAGIKA: dict[str, Any] = {
    "name": "magika",
    "task": "classify",
    "artifacts": {"onnx": "pkg://magika/models/standard_v3_3/model.onnx"},
    "runtimes": ["onnx"],
    "options": {
        "preprocess": "magika",
        "preprocess_config": "pkg://magika/models/standard_v3_3/config.min.json",
    },
}
BODY = {"inputs": [{"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\n"]}]}


@pytest.mark.slow
def test_gateway_bridges_while_the_primary_scales_from_zero(tmp_path: Path) -> None:
    """Knative's status is faked (no Knative controller runs here: ``fetch`` returns
    what it would write); the two Services' pods are real workers on loopback."""
    from tests.conftest import start_worker

    gpu_pod = start_worker("magika", tmp_path)
    cpu_pod = start_worker("magika", tmp_path)
    replicas = {"primary": 0}

    def fetch(cluster: ClusterSpec) -> list[ServiceStatus]:  # a fake of Knative's status
        return [
            ServiceStatus(
                "core",
                "Service",
                "magika-onnx-cuda",
                "magika",
                "onnx-cuda",
                "primary",
                "True",
                "",
                None,
                gpu_pod.url,
                "magika-onnx-cuda-00001",
                f"{replicas['primary']}/1",
            ),
            ServiceStatus(
                "core",
                "Service",
                "magika-onnx-cpu",
                "magika",
                "onnx-cpu",
                "bridge",
                "True",
                "",
                None,
                cpu_pod.url,
                "magika-onnx-cpu-00001",
                "1/1",
            ),
        ]

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MAGIKA]}))
    config = load_config(path)
    clock = FakeClock()
    router = ClusterRouter(
        config, [ClusterSpec(name="core")], fetch=fetch, refresh=3600, clock=clock
    )
    gw = gateway_config(config)
    app = Gateway(config, gw, router, Authenticator.from_config(gw.auth, {}), clock=clock)  # type: ignore[arg-type]
    server = GatewayServer(app, clock)
    server.start()
    try:

        def served() -> dict[str, int]:
            info = server.admin()["magika"]
            return {i["url"]: i["served"] for i in info["instances"]}

        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=BODY, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["shell"]
        assert served() == {gpu_pod.url: 0, cpu_pod.url: 1}
        # The wake-up request reached the primary ("Knative" scaled it up) ...
        server.wait_for(lambda: router.pools["magika"].waking is None, timeout=30)
        assert router.pools["magika"].cold_starts == 1
        replicas["primary"] = 1
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(router.sync(), server.loop).result(10)
        # ... so the next request goes to it.
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=BODY, timeout=30)
        assert r.status_code == 200
        assert served() == {gpu_pod.url: 1, cpu_pod.url: 1}
        cold = server.admin()["magika"]["last_cold_start"]
        assert set(cold["phases"]) == {"scale_from_zero"}
    finally:
        server.stop()
        gpu_pod.stop_cleanly()
        cpu_pod.stop_cleanly()


def test_model_without_a_service_is_503(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MAGIKA]}))
    config = load_config(path)
    clock = FakeClock()
    router = ClusterRouter(
        config, [ClusterSpec(name="core")], fetch=lambda c: [], refresh=3600, clock=clock
    )
    gw = gateway_config(config)
    app = Gateway(config, gw, router, Authenticator.from_config(gw.auth, {}), clock=clock)  # type: ignore[arg-type]
    server = GatewayServer(app, clock)
    server.start()
    try:
        r = httpx.post(f"{server.url}/v2/models/magika/infer", json=BODY, timeout=30)
        assert r.status_code == 503
        assert "edgeinfer knative apply" in r.json()["error"]
        assert r.headers.get("retry-after")
        missing = httpx.post(f"{server.url}/v2/models/nope/infer", json=BODY, timeout=30)
        assert missing.status_code == 404
    finally:
        server.stop()


def test_tiers_across_clusters_and_a_cluster_that_cannot_be_read(tmp_path: Path) -> None:
    """GPU primary on one cluster, CPU bridge at an edge site; same Service names."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MAGIKA]}))
    config = load_config(path)
    core, shop = ClusterSpec(name="core"), ClusterSpec(name="shop", labels=["edge"])
    broken = {"shop": False}

    def fetch(cluster: ClusterSpec) -> list[ServiceStatus]:  # a fake of Knative's status
        if cluster.name == "shop" and broken["shop"]:
            raise ConnectionError("edge site offline")
        role, tier = ("primary", "onnx-cuda") if cluster.name == "core" else ("bridge", "onnx-cpu")
        return [
            ServiceStatus(
                cluster.name,
                "Service",
                "magika-x",
                "magika",
                tier,
                role,
                "True",
                "",
                None,
                f"http://magika.{cluster.name}.svc",
                "magika-x-00001",
                "0/0" if role == "primary" else "1/1",
            )
        ]

    router = ClusterRouter(config, [core, shop], fetch=fetch, refresh=3600)
    asyncio.run(router.sync())
    pool = router.pools["magika"]
    assert pool.primary is not None and pool.primary.cluster == "core"
    assert [b.cluster for b in pool.bridges] == ["shop"]
    assert sorted(r.url for r in pool.replicas) == [
        "http://magika.core.svc",
        "http://magika.shop.svc",
    ]
    decision = pool.decide()
    assert decision.target is not None and decision.target.cluster == "shop"
    assert decision.wake is not None and decision.wake.cluster == "core"
    broken["shop"] = True
    asyncio.run(router.sync())  # the edge site's last known status stays
    assert [b.cluster for b in router.pools["magika"].bridges] == ["shop"]


def test_an_unreachable_api_server_is_read_again_with_back_off(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MAGIKA]}))
    config = load_config(path)
    clock = FakeClock()
    reads: list[float] = []
    down = {"now": False}

    def fetch(cluster: ClusterSpec) -> list[ServiceStatus]:  # a fake of Knative's status
        reads.append(clock.offset)
        if down["now"]:
            raise ConnectionError("API server unreachable")
        return [
            ServiceStatus(
                "core", "Service", "magika-x", "magika", "onnx-cpu", "primary", "True", "",
                None, "http://magika.core.svc", "magika-x-00001", "1/1",
            )
        ]  # fmt: skip

    router = ClusterRouter(config, [ClusterSpec(name="core")], fetch=fetch, refresh=2, clock=clock)

    def sync_at(offset: float) -> None:
        clock.offset = offset
        asyncio.run(router.sync())

    sync_at(0)
    down["now"] = True
    # Failures at 1 (next read 1 + 4), 5 (next 5 + 8), 13 (next 13 + 16); ticks between
    # the back-off's times read nothing.
    for t in (1, 2, 4, 5, 6, 12, 13, 20, 28):
        sync_at(t)
    assert reads == [0, 1, 5, 13]
    assert router.failures == {"core": 3}
    # The last known status serves all along.
    pool = router.pools["magika"]
    assert pool.primary is not None and pool.primary.url == "http://magika.core.svc"
    down["now"] = False
    sync_at(29)
    assert reads[-1] == 29 and router.failures == {}
    sync_at(31)
    assert reads[-1] == 31  # back to every refresh


def test_a_cluster_pool_refuses_a_keep_alive_hold(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MAGIKA]}))
    config = load_config(path)
    router = ClusterRouter(
        config, [ClusterSpec(name="core")], fetch=lambda c: [], refresh=3600, clock=FakeClock()
    )
    with pytest.raises(BadInput, match="keep_alive") as refused:
        router.pool("magika").hold(60.0)
    assert refused.value.status == 400
