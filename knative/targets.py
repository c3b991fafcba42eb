"""Which clusters a command acts on, and the whole config rendered for each.

A config without ``clusters:`` acts on one implicit cluster named ``default`` (the
kubeconfig's current context, namespace ``default``; ``--context``/``--namespace``
change it). With clusters, commands act on all of them or on those named with
``--cluster``. Placements come from the manager's plan when one is given; otherwise each
model gets :func:`knative.placement_checks.default_placement` on every selected cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from knative.aliases import render_alias
from knative.placement_checks import default_placement
from knative.render import Rendered, in_shared_host, render_model
from knative.wasm_host import render_wasm_host
from runtime.errors import ConfigError
from runtime.spec.clusters import ClusterSpec
from runtime.spec.model import ModelConfig, ModelSpec
from runtime.spec.placement import Placement, Tier

__all__ = ["Overrides", "render_config", "select_clusters"]


@dataclass(frozen=True)
class Overrides:
    """Command-line choices that override the cluster profiles."""

    clusters: tuple[str, ...] = ()
    context: str | None = None
    kubeconfig: str | None = None
    namespace: str | None = None


def select_clusters(config: ModelConfig, overrides: Overrides) -> list[ClusterSpec]:
    """The clusters a command acts on, with the command line's overrides applied."""
    if not config.clusters:
        if overrides.clusters and overrides.clusters != ("default",):
            raise ConfigError(
                f"{config.source}: no 'clusters:' in the config, so there is no cluster "
                f"{overrides.clusters[0]!r} (the implicit one is 'default')"
            )
        chosen = [ClusterSpec(name="default")]
    elif overrides.clusters:
        known = {c.name: c for c in config.clusters}
        missing = [n for n in overrides.clusters if n not in known]
        if missing:
            raise ConfigError(
                f"{config.source}: no cluster {missing[0]!r}; the config has "
                + ", ".join(repr(n) for n in known)
            )
        chosen = [known[n] for n in overrides.clusters]
    else:
        chosen = list(config.clusters)
    changes = {
        k: v
        for k, v in (
            ("context", overrides.context),
            ("kubeconfig", overrides.kubeconfig),
            ("namespace", overrides.namespace),
        )
        if v is not None
    }
    if changes and len(chosen) > 1 and {"context", "kubeconfig"} & changes.keys():
        raise ConfigError("--context/--kubeconfig apply to one cluster: name it with --cluster")
    return [c.model_copy(update=changes) if changes else c for c in chosen]


def render_config(
    config: ModelConfig,
    clusters: Sequence[ClusterSpec],
    plan: Mapping[str, Placement] | None = None,
) -> dict[str, Rendered]:
    """Every model's manifests per cluster name. ``plan`` (the manager's placements by
    model) decides the clusters and tiers; without it each model gets the default
    placement on every cluster. Endpoint-only models are not rendered (they run
    elsewhere)."""
    out = {c.name: Rendered() for c in clusters}
    hosted: dict[str, list[tuple[ModelSpec, Tier]]] = {c.name: [] for c in clusters}
    for spec in config.models:
        if not spec.runtimes:
            continue
        for cluster in clusters:
            if plan is not None:
                placement = plan.get(spec.name)
                if placement is None or not any(t.cluster == cluster.name for t in placement.tiers):
                    continue
            else:
                placement = default_placement(spec, cluster)
            out[cluster.name].extend(render_model(spec, placement, cluster, config.base_dir))
            hosted[cluster.name] += [
                (spec, t)
                for t in placement.tiers
                if in_shared_host(spec, t, cluster, config.base_dir)
            ]
    for cluster in clusters:  # one multi-model WASM host per cluster that wants one
        out[cluster.name].extend(render_wasm_host(hosted[cluster.name], cluster, config.base_dir))
    for cluster in clusters:
        for alias in config.aliases:
            out[cluster.name].extend(render_alias(alias, out[cluster.name]))
    return out
