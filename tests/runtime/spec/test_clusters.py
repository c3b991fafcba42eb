"""The ``clusters:`` list of a config: profiles and the errors a bad one gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.errors import ConfigError
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import load_config

MODEL = {
    "name": "tiny",
    "task": "chat",
    "artifacts": {"gguf": "tiny.gguf"},
    "runtimes": ["llama"],
}


def write(tmp_path: Path, clusters: list[dict[str, object]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [MODEL], "clusters": clusters}))
    return path


def test_clusters_load_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            [
                {"name": "core", "context": "prod", "labels": ["gpu"]},
                {
                    "name": "shop-17",
                    "labels": ["edge"],
                    "cpu_only": True,
                    "delivery": {"pvc": {"claim": "models"}},
                },
            ],
        )
    )
    core, shop = cfg.clusters
    assert cfg.cluster("core") is core and cfg.cluster("nowhere") is None
    assert core.has_gpu and not shop.has_gpu
    assert core.gpu.resource == "nvidia.com/gpu" and core.gpu.tolerations[0].key == "nvidia.com/gpu"
    assert shop.delivery is not None and shop.delivery.kind == "pvc"
    assert shop.delivery.mount_path == "/models"


def test_edge_label_alone_rules_out_gpu() -> None:
    assert not ClusterSpec(name="kiosk", labels=["edge"]).has_gpu


def test_config_without_clusters_still_loads() -> None:
    assert load_config().clusters == []


@pytest.mark.parametrize(
    ("cluster", "field", "message"),
    [
        ({"name": "Core"}, "name", "should match pattern"),
        ({"name": "a", "namespace": "Bad_NS"}, "namespace", "should match pattern"),
        ({"name": "a", "labels": ["GPU"]}, "(the cluster itself)", "must be a DNS label"),
        ({"name": "a", "delivery": {}}, "delivery", "exactly one of 'pvc' or 'image'"),
        (
            {"name": "a", "delivery": {"pvc": {"claim": "m"}, "image": {"reference": "r/m:1"}}},
            "delivery",
            "exactly one",
        ),
        (
            {
                "name": "a",
                "gpu": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            },
            "gpu.tolerations.0",
            "takes no value",
        ),
        ({"name": "a", "gpu": {"count": 0}}, "gpu.count", "greater than or equal to 1"),
        ({"name": "a", "images": {"cpu": "Has Spaces"}}, "images.cpu", "should match pattern"),
        ({"name": "a", "flavour": "x"}, "flavour", "Extra inputs are not permitted"),
    ],
)
def test_bad_cluster_named_in_error(
    tmp_path: Path, cluster: dict[str, object], field: str, message: str
) -> None:
    path = write(tmp_path, [cluster])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.message
    assert str(path) in text
    assert f"cluster {cluster['name']!r}" in text
    assert f"field {field!r}" in text
    assert message in text


def test_duplicate_cluster_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="each cluster name may be used once"):
        load_config(write(tmp_path, [{"name": "a"}, {"name": "a"}]))
