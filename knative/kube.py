"""The connection to one cluster, and the Kubernetes API's errors in edgeinfer's tree.

``ApiException`` s and discovery failures are translated here, where they enter, into
:class:`KubeError` (with the API's HTTP status) or :class:`ApplyConflict` (409 from
server-side apply: another field manager owns a field edgeinfer sets).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runtime.errors import ApplyConflict, KubeError
from runtime.spec.clusters import ClusterSpec

__all__ = ["KINDS", "Cluster", "connect", "kube_errors"]

# (apiVersion, kind) edgeinfer applies, in the order it applies them.
KINDS = (
    ("v1", "ConfigMap"),
    ("serving.knative.dev/v1", "Service"),
    ("core.spinkube.dev/v1alpha1", "SpinApp"),
)


@dataclass
class Cluster:
    """A connected cluster: its profile and a dynamic client."""

    spec: ClusterSpec
    client: Any  # kubernetes.dynamic.DynamicClient

    def resource(self, api_version: str, kind: str) -> Any:
        """The API resource for a kind; KubeError naming what to install if absent."""
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self.client.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            hint = {
                "Service": "is Knative Serving installed?",
                "SpinApp": "is SpinKube's spin-operator installed?",
            }.get(kind, "")
            raise KubeError(
                f"cluster {self.spec.name!r} has no {api_version} {kind} API; {hint}".rstrip(),
                status=404,
            ) from None

    def has(self, api_version: str, kind: str) -> bool:
        try:
            self.resource(api_version, kind)
        except KubeError:
            return False
        return True


def connect(spec: ClusterSpec) -> Cluster:
    """A client for the cluster's kubeconfig context (the current one if unset)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.dynamic import DynamicClient

    try:
        api = config.new_client_from_config(config_file=spec.kubeconfig, context=spec.context)
    except (ConfigException, OSError) as exc:
        where = spec.kubeconfig or "~/.kube/config (or $KUBECONFIG)"
        raise KubeError(
            f"cluster {spec.name!r}: cannot load kubeconfig {where}"
            + (f" context {spec.context!r}" if spec.context else "")
            + f": {exc}",
            status=500,
        ) from None
    with kube_errors(f"cluster {spec.name!r}"):
        return Cluster(spec, DynamicClient(api))


@contextmanager
def kube_errors(what: str) -> Iterator[None]:
    """Translate the client's exceptions raised inside into KubeError / ApplyConflict."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise _translate(what, exc) from None
    except HTTPError as exc:
        raise KubeError(f"{what}: cannot reach the API server: {exc}", status=502) from None


def _translate(what: str, exc: Any) -> KubeError:
    body: dict[str, Any] = {}
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        pass
    message = body.get("message") or exc.reason or str(exc)
    status = int(exc.status or 502)
    causes = (body.get("details") or {}).get("causes") or []
    if status == 409 and causes:
        fields = []
        for cause in causes:
            text = cause.get("message", "")
            manager = text.split('"')[1] if text.count('"') >= 2 else "another manager"
            if (cause.get("field", "?"), manager) not in fields:
                fields.append((cause.get("field", "?"), manager))
        lines = [f"  {path}: owned by field manager {mgr!r}" for path, mgr in fields]
        return ApplyConflict(
            f"{what}: conflict with another field manager:\n"
            + "\n".join(lines)
            + "\nedgeinfer does not take fields over silently: change them back in the other "
            "tool, drop them from it, or rerun with --force-conflicts to take ownership",
            fields,
        )
    if status == 422 and causes:
        lines = [f"  {c.get('field', '?')}: {c.get('message', '')}" for c in causes]
        message = "the API server rejected it:\n" + "\n".join(lines)
    return KubeError(f"{what}: {message}", status=status)
