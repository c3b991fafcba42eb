"""Rendered manifests against the real CRD schemas in ../shared/schemas/ (Knative
Service, SpinKube SpinApp), made strict so a field the API server would prune fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from knative.targets import Overrides, render_config, select_clusters
from runtime.spec.model import load_config
from tests.knative import conftest as knative_conftest
from tests.knative.conftest import WASM_MODEL, missing_shared, write_config

CLUSTERS: list[dict[str, Any]] = [
    {
        "name": "core",
        "labels": ["gpu"],
        "gpu": {"runtime_class_name": "nvidia"},
        "images": {"pull_secrets": ["regcred"]},
        "delivery": {"pvc": {"claim": "models", "sub_path": "v1"}},
        "knative": {"allow_zero_initial_scale": True},
    },
    {
        "name": "shop-17",
        "labels": ["edge"],
        "cpu_only": True,
        "wasm": {"runtime_class_name": "gvisor"},
        "delivery": {"image": {"reference": "registry.local/models/{model}:1"}},
    },
    {
        "name": "spin-edge",
        "labels": ["edge"],
        "wasm": {"spinkube": {"image": "registry.local/spin/{model}:1", "models": ["embed-wasm"]}},
        "delivery": {"pvc": {"claim": "models"}},
    },
]


def rendered(tmp_path: Path) -> list[dict[str, Any]]:
    path = write_config(
        tmp_path,
        {
            "models": [
                *load_config().model_dump(mode="json", by_alias=True, exclude_defaults=True)[
                    "models"
                ],
                WASM_MODEL,
            ],
            "clusters": CLUSTERS,
        },
    )
    # The bundled models' pkg:// artifacts stay in the image; the extra model's files
    # are on the volume.
    cfg = load_config(path)
    result = render_config(cfg, select_clusters(cfg, Overrides()))
    for r in result.values():
        assert not r.errors, [str(e) for e in r.errors]
    return [m for r in result.values() for m in r.manifests]


def test_every_service_fits_the_knative_crd(
    tmp_path: Path, service_schema: jsonschema.Draft7Validator
) -> None:
    services = [m for m in rendered(tmp_path) if m["kind"] == "Service"]
    tiers = {s["metadata"]["labels"]["edgeinfer.dev/tier"] for s in services}
    assert {"llama-cuda", "llama-cpu", "onnx-cuda", "onnx-cpu", "wasm-cpu"} <= tiers
    for service in services:
        service_schema.validate(service)


def test_spinapp_fits_the_spinkube_crd(
    tmp_path: Path, spinapp_schema: jsonschema.Draft7Validator
) -> None:
    apps = [m for m in rendered(tmp_path) if m["kind"] == "SpinApp"]
    assert [a["metadata"]["name"] for a in apps] == ["embed-wasm-wasm-cpu"]
    assert apps[0]["spec"]["image"] == "registry.local/spin/embed-wasm:1"
    spinapp_schema.validate(apps[0])


def test_config_maps_are_plain_string_data(tmp_path: Path) -> None:
    maps = [m for m in rendered(tmp_path) if m["kind"] == "ConfigMap"]
    assert maps
    for cm in maps:
        assert set(cm) == {"apiVersion", "kind", "metadata", "data"}
        assert all(isinstance(v, str) for v in cm["data"].values())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "template", "spec", "containerConcurrency"], "four"),
        (["spec", "template", "spec", "containers", 0, "readinessProbe", "httpGett"], {}),
        (["spec", "template", "spec", "timeoutSeconds"], 1.5),
        (["spec", "template", "spec", "containers", 0, "ports"], "8080"),
    ],
)
def test_schema_check_catches_bad_services(
    tmp_path: Path, service_schema: jsonschema.Draft7Validator, path: list[Any], value: Any
) -> None:
    """The check can fail: a wrong type or a misspelt (would-be-pruned) field."""
    service = next(m for m in rendered(tmp_path) if m["kind"] == "Service")
    node = service
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        service_schema.validate(service)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_shared_folder_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="shared folder"):
        missing_shared("no CRD schemas at /nowhere (the shared folder beside the repository)")


def test_a_missing_schema_file_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fixtures reach the same rule: under ``CI=true`` a schema folder that is not
    there fails the run instead of skipping the schema tests."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(knative_conftest, "SCHEMAS", tmp_path / "nowhere")
    with pytest.raises(pytest.fail.Exception, match="no CRD schemas"):
        knative_conftest.crd_schema("knative-service-crd.yaml")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no CRD schemas"):
        knative_conftest.crd_schema("knative-service-crd.yaml")
