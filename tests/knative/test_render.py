"""Rendering: worker container, GPU scheduling, WASM tiers, delivery, placements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from knative.naming import service_name
from knative.placement_checks import check_placement, default_placement
from knative.render import render_model
from knative.targets import Overrides, render_config, select_clusters
from runtime.errors import ConfigError
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelSpec, RuntimeName, load_config
from runtime.spec.placement import Device, Placement, Tier, TierRole
from tests.knative.conftest import WASM_MODEL, write_config

GPU = ClusterSpec(name="core", labels=["gpu"], namespace="ml")
EDGE = ClusterSpec(name="shop", labels=["edge"], cpu_only=True)


def smollm2() -> ModelSpec:
    spec = load_config().get("smollm2")
    assert spec is not None
    return spec


def services(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}


def test_gpu_tier_container_and_scheduling() -> None:
    spec = smollm2()
    out = render_model(spec, default_placement(spec, GPU), GPU, Path.cwd())
    svc = services(out.manifests)["smollm2-llama-cuda"]
    meta, template = svc["metadata"], svc["spec"]["template"]
    assert meta["namespace"] == "ml"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "edgeinfer"
    pod = template["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["worker", "--model", "smollm2"]
    assert args[args.index("--runtime") + 1] == "llama"
    assert args[args.index("--device") + 1] == "cuda"
    assert container["image"] == GPU.images.cuda
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # 600 MiB of model and its 8 sequences' KV cache, plus the CUDA runtime's host memory.
    assert container["resources"]["requests"]["memory"] == "1624Mi"
    assert container["resources"]["requests"]["cpu"] == "2"  # generative: two cores
    cm = next(m for m in out.manifests if m["kind"] == "ConfigMap")
    # ... and the runtime computes on two threads, not on all of the node's cores.
    assert yaml.safe_load(cm["data"]["config.yaml"])["models"][0]["options"]["threads"] == 2
    assert pod["containerConcurrency"] == 8 and pod["timeoutSeconds"] == 300
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/max-scale"] == "2"
    assert annotations["autoscaling.knative.dev/target"] == "8"  # its 8 sequences
    flags = [w for w in out.warnings if "config-features" in w.message]
    assert len(flags) == 1
    assert "kubernetes.podspec-nodeselector" in flags[0].message
    assert "kubernetes.podspec-tolerations" in flags[0].message
    zero = [w for w in out.warnings if "allow-zero-initial-scale" in w.message]
    assert zero and zero[0].model == "smollm2"


def test_bridge_tier_is_cpu_and_kept_warm() -> None:
    spec = smollm2()
    out = render_model(spec, default_placement(spec, GPU), GPU, Path.cwd())
    # The bundled smollm2 lists a WASM form: it is the bridge, on the CPU.
    bridge = services(out.manifests)["smollm2-wasm-cpu"]
    pod = bridge["spec"]["template"]["spec"]
    assert bridge["metadata"]["labels"]["edgeinfer.dev/role"] == "bridge"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert pod["containers"][0]["image"] == GPU.images.cpu
    assert (
        bridge["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"]
        == "1"
    )


def test_features_listed_on_the_profile_silence_the_warning() -> None:
    spec = smollm2()
    cluster = GPU.model_copy(
        update={
            "knative": GPU.knative.model_copy(
                update={
                    "features": [
                        "kubernetes.podspec-nodeselector",
                        "kubernetes.podspec-tolerations",
                    ],
                    "allow_zero_initial_scale": True,
                }
            )
        }
    )
    out = render_model(spec, default_placement(spec, cluster), cluster, Path.cwd())
    assert out.findings == []


def test_edge_cluster_never_gets_a_gpu_tier() -> None:
    spec = smollm2()
    placement = default_placement(spec, EDGE)
    assert [t.key for t in placement.tiers] == ["llama-cpu"]
    out = render_model(spec, placement, EDGE, Path.cwd())
    assert list(services(out.manifests)) == ["smollm2-llama-cpu"]
    # Even a plan that says otherwise is refused, naming model, tier and cluster.
    wrong = Placement("smollm2", (Tier(RuntimeName.LLAMA, Device.CUDA, "shop"),))
    problems = check_placement(spec, wrong, EDGE)
    assert (
        problems
        == [
            "model 'smollm2': tier 'llama-cuda' on cluster 'shop': "
            "a CPU-only cluster never gets a GPU tier"
        ]
        or "edge" in problems[0]
    )
    refused = render_model(spec, wrong, EDGE, Path.cwd())
    assert refused.errors and refused.errors[0].field == "placement"


def test_cpu_only_cluster_refuses_gpu() -> None:
    spec = smollm2()
    cpu = ClusterSpec(name="lab", cpu_only=True)
    wrong = Placement("smollm2", (Tier(RuntimeName.LLAMA, Device.CUDA, "lab"),))
    assert "a CPU-only cluster never gets a GPU tier" in check_placement(spec, wrong, cpu)[0]


def test_wasm_tier_runs_the_cpu_image_under_a_runtime_class(tmp_path: Path) -> None:
    cluster = ClusterSpec.model_validate(
        {
            "name": "shop",
            "labels": ["edge"],
            "wasm": {"runtime_class_name": "gvisor"},
            "delivery": {"image": {"reference": "registry.local/models/{model}:1"}},
        }
    )
    spec = ModelSpec.model_validate(WASM_MODEL)
    out = render_model(spec, default_placement(spec, cluster), cluster, tmp_path)
    svc = services(out.manifests)["embed-wasm-wasm-cpu"]
    pod = svc["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["containers"][0]["image"] == cluster.images.cpu
    assert pod["containers"][0]["args"][pod["containers"][0]["args"].index("--runtime") + 1] == (
        "wasm"
    )
    assert {
        "name": "models",
        "image": {"reference": "registry.local/models/embed-wasm:1", "pullPolicy": "IfNotPresent"},
    } in pod["volumes"]
    (flags,) = [w for w in out.warnings if "config-features" in w.message]
    assert "kubernetes.podspec-runtimeclassname" in flags.message
    assert "kubernetes.podspec-volumes-image" in flags.message


def test_delivery_rewrites_paths_into_the_read_only_volume(tmp_path: Path) -> None:
    cluster = ClusterSpec.model_validate(
        {"name": "core", "delivery": {"pvc": {"claim": "models"}, "mount_path": "/mnt/m"}}
    )
    spec = ModelSpec.model_validate(WASM_MODEL)
    out = render_model(spec, default_placement(spec, cluster), cluster, tmp_path)
    cm = next(m for m in out.manifests if m["kind"] == "ConfigMap")
    pod_config = yaml.safe_load(cm["data"]["config.yaml"])
    (model,) = pod_config["models"]
    assert model["artifacts"]["wasm"] == "/mnt/m/guests/embed.wasm"
    assert model["tokenizer"] == "/mnt/m/weights/tokenizer.json"
    # What the pod reads is a valid config for the worker.
    path = tmp_path / "pod.yaml"
    path.write_text(cm["data"]["config.yaml"])
    assert load_config(path).get("embed-wasm") is not None
    for svc in services(out.manifests).values():
        pod = svc["spec"]["template"]["spec"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "models", "mountPath": "/mnt/m", "readOnly": True} in mounts
        claim = next(v for v in pod["volumes"] if v["name"] == "models")
        assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_file_artifacts_without_delivery_are_an_error(tmp_path: Path) -> None:
    spec = ModelSpec.model_validate(WASM_MODEL)
    out = render_model(spec, default_placement(spec, GPU), GPU, tmp_path)
    fields = sorted(e.field for e in out.errors)
    assert fields == ["artifacts.safetensors", "artifacts.wasm", "tokenizer"]
    assert "needs 'delivery:'" in out.errors[0].message


def test_path_outside_the_delivery_root(tmp_path: Path) -> None:
    cluster = ClusterSpec.model_validate(
        {"name": "core", "delivery": {"pvc": {"claim": "models"}, "root": "weights"}}
    )
    spec = ModelSpec.model_validate(WASM_MODEL)
    out = render_model(spec, default_placement(spec, cluster), cluster, tmp_path)
    assert [e.field for e in out.errors] == ["artifacts.wasm"]
    assert "outside the delivery root" in out.errors[0].message


def test_config_change_changes_the_template_hash() -> None:
    spec = smollm2()
    changed = spec.model_copy(update={"description": "another"})
    a = render_model(spec, default_placement(spec, GPU), GPU, Path.cwd())
    b = render_model(changed, default_placement(changed, GPU), GPU, Path.cwd())

    def digest(r: Any) -> str:
        svc = services(r.manifests)["smollm2-llama-cuda"]
        return str(svc["spec"]["template"]["metadata"]["annotations"]["edgeinfer.dev/config-hash"])

    assert digest(a) != digest(b)


def test_long_model_names_stay_valid_revision_names() -> None:
    name = "a" * 60
    tier = Tier(RuntimeName.LLAMA, Device.CUDA, None, TierRole.PRIMARY)
    first = service_name(name, tier)
    assert len(first) <= 57 and first.endswith("-llama-cuda")
    assert first != service_name("a" * 59 + "b", tier)


def test_select_clusters_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            {"models": [WASM_MODEL], "clusters": [{"name": "a"}, {"name": "b", "namespace": "x"}]},
        )
    )
    assert [c.name for c in select_clusters(cfg, Overrides())] == ["a", "b"]
    (b,) = select_clusters(cfg, Overrides(clusters=("b",), namespace="y", context="ctx"))
    assert (b.namespace, b.context) == ("y", "ctx")
    with pytest.raises(ConfigError, match="no cluster 'c'"):
        select_clusters(cfg, Overrides(clusters=("c",)))
    with pytest.raises(ConfigError, match="one cluster"):
        select_clusters(cfg, Overrides(context="ctx"))


def test_plan_decides_clusters_and_tiers(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            {
                "models": [WASM_MODEL],
                "clusters": [
                    {"name": "core", "delivery": {"pvc": {"claim": "m"}}},
                    {"name": "shop", "labels": ["edge"], "delivery": {"pvc": {"claim": "m"}}},
                ],
            },
        )
    )
    plan = {
        "embed-wasm": Placement(
            "embed-wasm",
            (
                Tier(RuntimeName.ONNX, Device.CUDA, "core"),
                Tier(RuntimeName.WASM, Device.CPU, "shop", TierRole.BRIDGE),
            ),
        )
    }
    result = render_config(cfg, cfg.clusters, plan)
    assert list(services(result["core"].manifests)) == ["embed-wasm-onnx-cuda"]
    assert list(services(result["shop"].manifests)) == ["embed-wasm-wasm-cpu"]


def test_cli_render_writes_files_kubectl_applies_in_order(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["knative", "render", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert files[0].startswith("00-configmap-") and files[-1].startswith("10-service-")
    assert "10-service-smollm2-llama-cuda.yaml" in files
    for file in (tmp_path / "default").iterdir():
        doc = yaml.safe_load(file.read_text())
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "edgeinfer"


def test_cli_render_refuses_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"models": [WASM_MODEL]})
    result = CliRunner().invoke(app, ["knative", "render", "--config", str(path)])
    assert result.exit_code == 2
    assert "needs 'delivery:'" in result.output and "nothing written" in result.output


def test_manager_plan_file_decides(tmp_path: Path) -> None:
    """The JSON that 'edgeinfer plan --json' prints is the contract with the manager."""
    import json

    config = write_config(
        tmp_path,
        {
            "models": load_config().model_dump(mode="json", by_alias=True, exclude_defaults=True)[
                "models"
            ],
            "clusters": [
                {"name": "core", "context": "prod-gpu"},
                {"name": "shop", "labels": ["edge"]},
            ],
        },
    )
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "inventory": {},
                "models": [
                    {
                        "model": "smollm2",
                        "reason": "GPU meets the goal; CPU bridge covers the cold start",
                        "tiers": [
                            # The manager names a probed cluster by its context.
                            {"tier": "llama-cuda", "role": "primary", "cluster": "prod-gpu"},
                            {"tier": "llama-cpu", "role": "bridge", "cluster": "shop"},
                        ],
                    },
                    {
                        "model": "magika",
                        "reason": "local",
                        "tiers": [{"tier": "onnx-cpu", "role": "primary", "cluster": None}],
                    },
                ],
            }
        )
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["knative", "render", "--config", str(config), "--plan", str(plan), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    core = sorted(p.name for p in (out / "core").iterdir())
    shop = sorted(p.name for p in (out / "shop").iterdir())
    assert core == ["00-configmap-edgeinfer-smollm2.yaml", "10-service-smollm2-llama-cuda.yaml"]
    assert shop == ["00-configmap-edgeinfer-smollm2.yaml", "10-service-smollm2-llama-cpu.yaml"]
    svc = yaml.safe_load((out / "core" / core[1]).read_text())
    assert svc["metadata"]["annotations"]["edgeinfer.dev/placement"].startswith("GPU meets")

    plan.write_text(json.dumps({"models": [{"model": "smollm2", "tiers": [{"tier": "x"}]}]}))
    bad = CliRunner().invoke(
        app, ["knative", "render", "--config", str(config), "--plan", str(plan)]
    )
    assert bad.exit_code == 2 and "not the output of 'edgeinfer plan --json'" in bad.output


def test_manager_plan_gpu_on_edge_is_refused(tmp_path: Path) -> None:
    import json

    config = write_config(
        tmp_path,
        {
            "models": load_config().model_dump(mode="json", by_alias=True, exclude_defaults=True)[
                "models"
            ],
            "clusters": [{"name": "shop", "labels": ["edge"]}],
        },
    )
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "model": "smollm2",
                        "tiers": [{"tier": "llama-cuda", "role": "primary", "cluster": "shop"}],
                    }
                ]
            }
        )
    )
    result = CliRunner().invoke(
        app, ["knative", "render", "--config", str(config), "--plan", str(plan)]
    )
    assert result.exit_code == 2
    assert "an edge cluster never gets a GPU tier" in result.output


def test_files_of_the_source_tree_are_read_from_the_image(tmp_path: Path) -> None:
    """A WASM package shipped in wasm-modules/ is in the worker image: no volume."""
    root = Path(__file__).resolve().parents[2]
    config = root / "wasm-modules" / "packages" / "models.yaml"
    spec = ModelSpec.model_validate(
        {
            "name": "shipped-wasm",
            "task": "chat",
            "artifacts": {"wasm": "smollm2-wasi-nn"},
            "runtimes": ["wasm"],
        }
    )
    out = render_model(spec, default_placement(spec, EDGE), EDGE, config.parent)
    assert out.errors == []
    cm = next(m for m in out.manifests if m["kind"] == "ConfigMap")
    (model,) = yaml.safe_load(cm["data"]["config.yaml"])["models"]
    assert model["artifacts"]["wasm"] == "/opt/edgeinfer/src/wasm-modules/packages/smollm2-wasi-nn"
    pod = services(out.manifests)["shipped-wasm-wasm-cpu"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["edgeinfer-config"]


def test_manager_warm_minimum_becomes_min_scale(tmp_path: Path) -> None:
    """The manager's Tier.min_scale (its answer to a cold start that breaks the goal)."""
    import json

    from knative.placement_checks import placements_from_plan

    plan = tmp_path / "plan.json"
    tier = {"tier": "llama-cuda", "role": "primary", "cluster": "core", "min_scale": 2}
    plan.write_text(json.dumps({"models": [{"model": "smollm2", "tiers": [tier]}]}))
    core = ClusterSpec(name="core")
    placement = placements_from_plan(plan, (core,))["smollm2"]
    out = render_model(smollm2(), placement, core, Path.cwd())
    annotations = services(out.manifests)["smollm2-llama-cuda"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["autoscaling.knative.dev/min-scale"] == "2"
    assert annotations["autoscaling.knative.dev/initial-scale"] == "2"


@pytest.mark.parametrize(("abi", "kind"), [("spin-llm", "SpinApp"), ("wasi-nn", "Service")])
def test_spin_guests_are_found_by_their_package_manifest(
    tmp_path: Path, abi: str, kind: str
) -> None:
    package = tmp_path / "chat-spin"
    package.mkdir()
    (package / "edgeinfer-wasm.yaml").write_text(f"abi: {abi}\nguest: app.wasm\n")
    spec = ModelSpec.model_validate(
        {
            "name": "chat-spin",
            "task": "chat",
            "artifacts": {"wasm": "chat-spin"},
            "runtimes": ["wasm"],
        }
    )
    cluster = ClusterSpec.model_validate(
        {
            "name": "spin",
            "labels": ["edge"],
            "wasm": {"spinkube": {"image": "registry.local/spin/{model}:1"}},
            "delivery": {"pvc": {"claim": "models"}},
        }
    )
    out = render_model(spec, default_placement(spec, cluster), cluster, tmp_path)
    assert out.errors == []
    assert [m["kind"] for m in out.manifests] == ["ConfigMap", kind]


def test_manager_keep_alive_becomes_a_short_window(tmp_path: Path) -> None:
    """The manager's Tier.keep_alive_s (a rarely used model that goes to zero soon after
    each request), read from `edgeinfer plan --json`: the revision's stable window, with
    no scale-down delay or retention; without it, the model's own rule."""
    import json

    from knative.placement_checks import placements_from_plan

    core = ClusterSpec(name="core")
    windows = {}
    for keep in (6, None):
        plan = tmp_path / f"plan-{keep}.json"
        tier = {"tier": "llama-cuda", "role": "primary", "cluster": "core", "keep_alive_s": keep}
        plan.write_text(json.dumps({"models": [{"model": "smollm2", "tiers": [tier]}]}))
        placement = placements_from_plan(plan, (core,))["smollm2"]
        assert placement.primary.keep_alive_s == keep
        out = render_model(smollm2(), placement, core, Path.cwd())
        meta = services(out.manifests)["smollm2-llama-cuda"]["spec"]["template"]["metadata"]
        a = meta["annotations"]
        windows[keep] = a["autoscaling.knative.dev/window"]
        if keep is not None:
            assert a["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "0s"
    assert windows == {6: "6s", None: "60s"}
