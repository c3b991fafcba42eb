"""Model files in the pod without a download on every cold start.

Artifacts given as ``pkg://`` / ``py://`` live in the worker image (the bundled models
are installed there at build time), and so do files of edgeinfer's own source tree (the
WASM packages under ``wasm-modules/``, at ``images.source_root``): they need nothing.
Other artifacts given as paths are read from a volume mounted read-only: a
PersistentVolumeClaim filled once, or an OCI image holding the files (a Kubernetes
``image`` volume, pulled once per node and cached by the container runtime). The
cluster profile's ``delivery`` chooses; the volume is laid out as the local folder
``delivery.root`` (relative to the config file), so
``models/foo.gguf`` is read at ``<mount_path>/models/foo.gguf`` in the pod.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.spec.clusters import ClusterSpec, ModelDelivery
from runtime.spec.model import ModelSpec

__all__ = ["VOLUME", "Delivery", "plan_delivery"]

VOLUME = "models"
_IN_IMAGE = ("pkg://", "py://")
# edgeinfer's source tree, which the worker images hold at images.source_root.
_SOURCE_TREE = Path(__file__).resolve().parents[1]


@dataclass
class Delivery:
    """What the pod needs for the model's files: the spec as the pod sees it, and the
    volume, its mount and the Knative feature flag it requires (None: nothing)."""

    spec: dict[str, Any]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    feature: str | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (field, message)


def plan_delivery(spec: ModelSpec, cluster: ClusterSpec, base_dir: Path) -> Delivery:
    """The model's spec with its file paths rewritten to where the pod mounts them."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data.pop("endpoint", None)
    out = Delivery(spec=data)
    refs = []
    for name, ref in _file_refs(spec):
        path = _absolute(ref, base_dir)
        if path.is_relative_to(_SOURCE_TREE):
            in_tree = path.relative_to(_SOURCE_TREE).as_posix()
            _set(data, name, str(PurePosixPath(cluster.images.source_root) / in_tree))
        else:
            refs.append((name, ref))
    if not refs:
        return out
    source = cluster.delivery
    if source is None:
        for name, ref in refs:
            out.errors.append(
                (
                    name,
                    f"{ref!r} is a file path; cluster {cluster.name!r} needs 'delivery:' "
                    "(a pvc or an OCI image holding the model) so pods can read it",
                )
            )
        return out
    root = (base_dir / source.root).resolve()
    for name, ref in refs:
        path = _absolute(ref, base_dir)
        try:
            rel = path.relative_to(root)
        except ValueError:
            out.errors.append(
                (name, f"{ref!r} lies outside the delivery root {root}, so no volume holds it")
            )
            continue
        _set(data, name, str(PurePosixPath(source.mount_path) / rel.as_posix()))
    out.volumes, out.mounts, out.feature = _volume(source, spec.name)
    return out


def _absolute(ref: str, base_dir: Path) -> Path:
    path = Path(ref).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def _file_refs(spec: ModelSpec) -> list[tuple[str, str]]:
    """(dotted field, reference) of every artifact the config gives as a path."""
    found = [(f"artifacts.{fmt.value}", ref) for fmt, ref in spec.artifacts.items()]
    if spec.tokenizer:
        found.append(("tokenizer", spec.tokenizer))
    if spec.options.preprocess_config:
        found.append(("options.preprocess_config", spec.options.preprocess_config))
    return [(name, ref) for name, ref in found if not ref.startswith(_IN_IMAGE)]


def _set(data: dict[str, Any], dotted: str, value: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def _volume(
    source: ModelDelivery, model: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    mount: dict[str, Any] = {"name": VOLUME, "mountPath": source.mount_path, "readOnly": True}
    if source.pvc is not None:
        volume: dict[str, Any] = {
            "name": VOLUME,
            "persistentVolumeClaim": {"claimName": source.pvc.claim, "readOnly": True},
        }
        if source.pvc.sub_path:
            mount["subPath"] = source.pvc.sub_path
        return [volume], [mount], "kubernetes.podspec-persistent-volume-claim"
    assert source.image is not None
    volume = {
        "name": VOLUME,
        "image": {
            "reference": source.image.reference.replace("{model}", model),
            "pullPolicy": source.image.pull_policy,
        },
    }
    return [volume], [mount], "kubernetes.podspec-volumes-image"
