"""Fixtures for the Knative tests: cluster profiles, configs, the real CRD schemas."""

from __future__ import annotations

import copy
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SCHEMAS = SHARED / "schemas"


def strict_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON schema that also rejects unknown fields.

    The API server *prunes* fields a structural schema does not list, silently; a
    manifest with a misspelt field would be accepted and lose it. So every object
    schema that lists properties and does not preserve unknown fields gets
    ``additionalProperties: false`` here.
    """
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def missing_shared(why: str) -> NoReturn:
    """Skip where ``../shared`` is absent; under ``CI=true`` fail instead: CI provides
    it, so its absence there is a broken setup, not a reason to test less."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def crd_schema(file: str) -> dict[str, Any]:
    path = SCHEMAS / file
    if not path.exists():
        missing_shared(f"no CRD schemas at {SCHEMAS} (the shared folder beside the repository)")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", v.get("served")))
    return strict_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def validator(file: str) -> jsonschema.Draft7Validator:
    """A validator for the CRD's schema (checked once: checking is the slow part)."""
    schema = crd_schema(file)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="session")
def service_schema() -> jsonschema.Draft7Validator:
    return validator("knative-service-crd.yaml")


@pytest.fixture(scope="session")
def spinapp_schema() -> jsonschema.Draft7Validator:
    return validator("spinapp-crd.yaml")


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


WASM_MODEL: dict[str, Any] = {
    "name": "embed-wasm",
    "task": "embedding",
    "artifacts": {"wasm": "guests/embed.wasm", "safetensors": "weights/model.safetensors"},
    "tokenizer": "weights/tokenizer.json",
    "runtimes": ["wasm", "onnx"],
    "scaling": {"min-scale": 0, "initial-scale": 1, "max-scale": 3, "target": 4},
    "resources": {"memory_mib": 256, "cpu": 0.5},
}


# -- a real kube-apiserver (../shared/tools/kube-apiserver) ---------------------------

KAS = SHARED / "tools" / "kube-apiserver"
CACHE = Path(os.environ.get("KUBE_APISERVER_CACHE", Path.home() / ".cache/kube-apiserver-1.20"))


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kubeconfig for a real kube-apiserver 1.20 with the Knative/SpinApp CRDs."""
    if not (KAS / "build.sh").exists():
        missing_shared(f"no kube-apiserver tool at {KAS} (the shared folder beside the repo)")
    built = (CACHE / "bin" / "kube-apiserver").exists()
    may_build = (
        os.environ.get("CI") == "true" or os.environ.get("EDGEINFER_BUILD_KUBE_APISERVER") == "1"
    )
    if not built and not may_build:
        pytest.skip(
            f"kube-apiserver not built yet: run {KAS}/build.sh once (4-10 min), or set "
            "EDGEINFER_BUILD_KUBE_APISERVER=1 to let the tests build it"
        )
    build = subprocess.run([KAS / "build.sh"], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(
            "kube-apiserver unavailable: build.sh failed (needs Debian apt + PyPI):\n"
            + build.stderr[-1500:]
        )
    run_dir = tmp_path_factory.mktemp("kube-apiserver")
    start = subprocess.run([KAS / "start.sh", "--run-dir", run_dir], capture_output=True, text=True)
    if start.returncode != 0:
        pytest.fail("start.sh failed:\n" + start.stderr[-3000:])
    for var in ("NO_PROXY", "no_proxy"):  # the client honours HTTPS_PROXY
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "127.0.0.1", "localhost"]))
    try:
        yield start.stdout.strip().splitlines()[-1].removeprefix("KUBECONFIG=")
    finally:
        subprocess.run([KAS / "stop.sh", "--run-dir", run_dir], check=False)


@pytest.fixture
def namespace(kubeconfig: str) -> str:
    """A fresh namespace per test (deleted namespaces stay Terminating there)."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name
