"""Cluster profiles: the Kubernetes clusters (with Knative Serving) a config may use.

A config's optional ``clusters:`` list (see ``runtime.spec.model.ModelConfig``) says, per
cluster, how to reach it (kubeconfig context, optional kubeconfig file, namespace), what
kind of site it is (labels such as ``gpu`` or ``edge``; ``cpu_only``), how GPU pods are
scheduled there (resource name, node selector, tolerations, runtime class), which worker
images to run, how WASM tiers run (plain CPU image, optionally a ``runtimeClassName``;
SpinKube ``SpinApp`` s for Spin guests), and how model files reach the pods without a
download on every cold start (a PersistentVolumeClaim or an OCI image, mounted
read-only).

The manager reads these profiles to place models (an edge or ``cpu_only`` cluster never
gets a GPU tier); the Knative renderer reads them to write the manifests. Both read them
from here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from runtime.spec.frozen import Frozen

__all__ = [
    "ClusterSpec",
    "GpuProfile",
    "ImageDelivery",
    "Images",
    "KnativeProfile",
    "ModelDelivery",
    "PvcDelivery",
    "SpinKubeProfile",
    "Toleration",
    "WasmProfile",
]

# A DNS-1123 label: Kubernetes names of namespaces, claims and clusters here.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A label key with an optional DNS prefix (``nvidia.com/gpu.present``) or a resource name.
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# An image reference: [registry/]path[:tag][@digest]; no spaces, no scheme.
IMAGE_REF = r"^[a-z0-9][a-z0-9._\-/:@{}]*[a-zA-Z0-9_.\-}]$"


class Toleration(Frozen):
    """A Kubernetes toleration (``spec.tolerations[]`` of a pod)."""

    key: str | None = Field(None, pattern=QUALIFIED_NAME)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0, alias="tolerationSeconds")

    @model_validator(mode="after")
    def _operator_value(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator 'Exists' takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator 'Exists'")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect 'NoExecute'")
        return self

    def manifest(self) -> dict[str, object]:
        """As it appears in a pod spec (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class GpuProfile(Frozen):
    """How a GPU tier's pods ask for and land on GPU nodes of this cluster."""

    resource: str = Field(
        "nvidia.com/gpu", pattern=QUALIFIED_NAME, description="extended resource to limit"
    )
    count: int = Field(1, ge=1, le=16, description="GPUs per replica")
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="labels of the GPU nodes (GPU operator's default label)",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ],
        description="taints GPU nodes carry",
    )
    runtime_class_name: str | None = Field(
        None, pattern=DNS_LABEL, description="e.g. 'nvidia' where the GPU runtime is not default"
    )
    host_memory_overhead_mib: int = Field(
        1024,
        ge=0,
        description="host memory a CUDA process needs beyond the model's own (CUDA context, "
        "cuBLAS, pinned buffers), added to a GPU tier's memory request and limit",
    )

    @model_validator(mode="after")
    def _keys(self) -> GpuProfile:
        for key in self.node_selector:
            if not re.match(QUALIFIED_NAME, key):
                raise ValueError(f"node_selector key {key!r} is not a Kubernetes label key")
        return self


class Images(Frozen):
    """The worker images (see ``knative/images/``) and how to pull them."""

    cpu: str = Field(
        "ghcr.io/edgeinfer/worker-cpu:0.1.0",
        pattern=IMAGE_REF,
        description="CPU worker: wasm + onnx + llama runtimes",
    )
    cuda: str = Field(
        "ghcr.io/edgeinfer/worker-cuda:0.1.0",
        pattern=IMAGE_REF,
        description="CUDA worker: onnx + llama with CUDA",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pull_secrets: list[str] = Field(default_factory=list, description="imagePullSecrets names")
    source_root: str = Field(
        "/opt/edgeinfer/src",
        pattern=r"^/[^\s:]*$",
        description="where the images hold edgeinfer's source tree: files of the tree "
        "(e.g. WASM packages under wasm-modules/) are read from there, not a volume",
    )


class SpinKubeProfile(Frozen):
    """Render Spin guests as SpinKube ``SpinApp`` s instead of Knative Services."""

    executor: str = Field("containerd-shim-spin", pattern=DNS_LABEL)
    image: str = Field(
        ...,
        pattern=IMAGE_REF,
        description="the Spin app's OCI image; '{model}' is replaced by the model name",
    )
    replicas: int = Field(1, ge=0, le=1000, description="when autoscaling is off")
    models: list[str] = Field(
        default_factory=list,
        description="models whose WASM guest is a Spin app (besides those whose package "
        "manifest says abi: spin-llm): their WASM tier is a SpinApp",
    )


class WasmProfile(Frozen):
    """How WASM tiers run: the CPU image (wasmtime inside), optionally a runtime class."""

    runtime_class_name: str | None = Field(
        None, pattern=DNS_LABEL, description="e.g. a sandboxed runtime such as 'gvisor'"
    )
    spinkube: SpinKubeProfile | None = None
    shared_host: bool = Field(
        False,
        description="serve every WASM tier (Spin apps excepted) from one multi-model "
        "Service, edgeinfer-wasm-host, instead of one Service per model",
    )


class PvcDelivery(Frozen):
    """Model files on a PersistentVolumeClaim (ReadOnlyMany, filled once)."""

    claim: str = Field(..., pattern=DNS_LABEL, description="claim name in the namespace")
    sub_path: str | None = Field(None, description="folder inside the volume")


class ImageDelivery(Frozen):
    """Model files in an OCI image, mounted as a Kubernetes ``image`` volume."""

    reference: str = Field(
        ..., pattern=IMAGE_REF, description="image holding the files; '{model}' is replaced"
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class ModelDelivery(Frozen):
    """Where pods find model files the config gives as paths: mounted read-only at
    ``mount_path``, laid out as under ``root`` (a folder relative to the config file).

    Artifacts given as ``pkg://`` or ``py://`` are installed in the worker image and need
    no delivery at all.
    """

    pvc: PvcDelivery | None = None
    image: ImageDelivery | None = None
    mount_path: str = Field("/models", pattern=r"^/[^\s:]*$")
    root: str = Field(".", description="local folder whose layout the volume mirrors")

    @model_validator(mode="after")
    def _one_source(self) -> ModelDelivery:
        if (self.pvc is None) == (self.image is None):
            raise ValueError("model delivery needs exactly one of 'pvc' or 'image'")
        return self

    @property
    def kind(self) -> Literal["pvc", "image"]:
        return "pvc" if self.pvc is not None else "image"


class KnativeProfile(Frozen):
    """What this cluster's Knative Serving is set up to allow: its ``config-autoscaler``,
    ``config-defaults`` and ``config-features``, as far as rendering must know them."""

    autoscaling_class: Literal["kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"] = (
        "kpa.autoscaling.knative.dev"
    )
    metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    visibility: Literal["cluster-local", "external"] = Field(
        "cluster-local",
        description="cluster-local: only the gateway (inside the cluster) reaches the models",
    )
    allow_zero_initial_scale: bool = Field(
        False, description="config-autoscaler allow-zero-initial-scale is 'true'"
    )
    max_scale_limit: int = Field(0, ge=0, description="config-autoscaler max-scale-limit")
    max_revision_timeout_seconds: int = Field(
        600, ge=1, description="config-defaults max-revision-timeout-seconds"
    )
    container_concurrency_max_limit: int = Field(
        1000, ge=1, description="config-defaults container-concurrency-max-limit"
    )
    features: list[str] = Field(
        default_factory=list,
        description="config-features flags enabled here, e.g. 'kubernetes.podspec-tolerations'",
    )
    bridge_min_scale: int = Field(
        1,
        ge=0,
        description="min-scale of bridge tiers: a pod cold start takes seconds, so a bridge "
        "that should answer while the primary scales from zero must already run",
    )


class ClusterSpec(Frozen):
    """One Kubernetes cluster with Knative Serving (or an edge site running one)."""

    name: str = Field(..., pattern=DNS_LABEL)
    context: str | None = Field(None, description="kubeconfig context (default: current)")
    kubeconfig: str | None = Field(None, description="kubeconfig file (default: ~/.kube)")
    namespace: str = Field("default", pattern=DNS_LABEL)
    labels: list[str] = Field(
        default_factory=list, description="site labels, e.g. 'gpu', 'edge', 'eu-west'"
    )
    cpu_only: bool = Field(False, description="no GPU tier is ever placed here")
    gpu: GpuProfile = GpuProfile()
    images: Images = Images()
    wasm: WasmProfile = WasmProfile()
    delivery: ModelDelivery | None = None
    knative: KnativeProfile = KnativeProfile()
    route_via: Literal["address", "url"] = Field(
        "address",
        description="which status URL the gateway uses: 'address' (cluster-local, for a "
        "gateway inside the cluster) or 'url' (the external URL)",
    )

    @model_validator(mode="after")
    def _labels(self) -> ClusterSpec:
        for label in self.labels:
            if not re.match(DNS_LABEL, label):
                raise ValueError(f"site label {label!r} must be a DNS label (a-z, 0-9, '-')")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("each site label may be listed once")
        return self

    @property
    def has_gpu(self) -> bool:
        """Whether GPU tiers may be placed here: never on an edge or CPU-only site."""
        return not self.cpu_only and "edge" not in self.labels
