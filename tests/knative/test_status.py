"""Status and watches against a real kube-apiserver: ``status`` written the way
Knative's controller writes it (no controller runs there), read back; watches for Ready
and for deletion; replicas from the latest Revision."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from knative.apply import apply_manifests, delete_owned
from knative.status import read_status, wait_for
from tests.knative.cluster_helpers import (
    MAGIKA,
    MINILM,
    install_revision_crd,
    manifests,
    set_ready,
    setup,
    watch_started,
)

pytestmark = pytest.mark.slow


def test_status_read_back_after_knative_marks_ready(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM, MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    rows = {r.name: r for r in read_status(cluster)}
    assert set(rows) == {
        "minilm-onnx-cuda",
        "minilm-onnx-cpu",
        "magika-onnx-cuda",
        "magika-onnx-cpu",
    }
    assert all(r.ready == "Unknown" and r.url is None for r in rows.values())
    set_ready(cluster, "minilm-onnx-cuda")
    set_ready(cluster, "magika-onnx-cuda", ready=False)
    rows = {r.name: r for r in read_status(cluster)}
    ok = rows["minilm-onnx-cuda"]
    assert ok.is_ready and ok.revision == "minilm-onnx-cuda-00001"
    assert ok.url == f"http://minilm-onnx-cuda.{namespace}.example.com"
    assert ok.address == f"http://minilm-onnx-cuda.{namespace}.svc.cluster.local"
    assert (ok.model, ok.tier, ok.role) == ("minilm", "onnx-cuda", "primary")
    bad = rows["magika-onnx-cuda"]
    assert bad.ready == "False" and "image pull backoff" in bad.reason
    # A new spec (generation 2) is not Ready until the controller has seen it.
    changed = {**MINILM, "scaling": {"max-scale": 3, "target": 8}}
    cfg2, _ = setup(tmp_path, kubeconfig, namespace, [changed, MAGIKA])
    apply_manifests(cluster, manifests(cfg2))
    again = {r.name: r for r in read_status(cluster)}["minilm-onnx-cuda"]
    assert not again.is_ready and "not reconciled" in again.reason
    result = CliRunner().invoke(app, ["knative", "status", "--config", cfg.source or "", "--json"])
    assert result.exit_code == 0, result.output
    lines = [yaml.safe_load(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {row["name"] for row in lines} == set(rows)


def test_watch_sees_ready_and_deletion(
    tmp_path: Path, kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MINILM])
    apply_manifests(cluster, manifests(cfg))
    names = ["minilm-onnx-cuda", "minilm-onnx-cpu"]
    seen: list[Any] = []
    watching = watch_started(monkeypatch)

    def controller() -> None:
        assert watching.wait(30)
        for name in names:
            set_ready(cluster, name)

    worker = threading.Thread(target=controller)
    worker.start()
    left = wait_for(cluster, names, until="ready", timeout=30, on_change=seen.append)
    worker.join()
    assert left == set()
    assert {s.name for s in seen if not isinstance(s, str) and s.is_ready} == set(names)
    # Nothing Ready comes: the wait ends at its timeout and says what is missing.
    cfg2, _ = setup(tmp_path, kubeconfig, namespace, [MINILM, MAGIKA])
    apply_manifests(cluster, manifests(cfg2))
    assert wait_for(cluster, ["magika-onnx-cpu"], until="ready", timeout=2) == {"magika-onnx-cpu"}

    watching.clear()

    def remove() -> None:
        assert watching.wait(30)
        delete_owned(cluster, ["minilm"])

    worker = threading.Thread(target=remove)
    worker.start()
    left = wait_for(cluster, names, until="gone", timeout=30, on_change=seen.append)
    worker.join()
    assert left == set() and set(names) <= {s for s in seen if isinstance(s, str)}


def test_replicas_read_from_the_latest_revision(
    tmp_path: Path, kubeconfig: str, namespace: str
) -> None:
    install_revision_crd(kubeconfig)
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    apply_manifests(cluster, manifests(cfg))
    set_ready(cluster, "magika-onnx-cuda")
    set_ready(cluster, "magika-onnx-cpu")
    revisions = cluster.resource("serving.knative.dev/v1", "Revision")
    for name, actual in (("magika-onnx-cuda", 0), ("magika-onnx-cpu", 2)):
        rev = revisions.create(
            body={
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {"name": f"{name}-00001", "namespace": namespace},
            },
            namespace=namespace,
        ).to_dict()
        rev["status"] = {"actualReplicas": actual, "desiredReplicas": actual}
        cluster.client.replace(revisions.subresources["status"], body=rev, namespace=namespace)
    rows = {r.name: r for r in read_status(cluster)}
    assert rows["magika-onnx-cuda"].replicas == "0/0" and rows["magika-onnx-cuda"].actual == 0
    assert rows["magika-onnx-cpu"].replicas == "2/2" and rows["magika-onnx-cpu"].actual == 2


def test_cli_apply_wait_reports_progress_and_timeouts(
    tmp_path: Path, kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, cluster = setup(tmp_path, kubeconfig, namespace, [MAGIKA])
    runner = CliRunner()
    base = ["knative", "apply", "--config", cfg.source or "", "--no-diff", "--wait"]
    late = runner.invoke(app, [*base, "--timeout", "2"])
    assert late.exit_code == 1
    assert "not Ready after 2s: magika-onnx-cpu, magika-onnx-cuda" in late.output

    watching = watch_started(monkeypatch)  # after the late run: the next --wait watches

    def controller() -> None:
        assert watching.wait(30)
        for name in ("magika-onnx-cuda", "magika-onnx-cpu"):
            set_ready(cluster, name)

    worker = threading.Thread(target=controller)
    worker.start()
    done = runner.invoke(app, [*base, "--timeout", "30"])
    worker.join()
    assert done.exit_code == 0, done.output
    assert "all 2 Service(s) Ready" in done.output
