"""The manager's keep-alive applied to a model's scaling rule (pure).

The manager may choose how long a tier's replica stays up after its last request
(``Tier.keep_alive_s``: a rarely used model whose cold start fits its goal goes to
zero soon after each request, as Knative does with a short stable window and no
retention, or Ollama with ``keep_alive: 0``). The autoscaler scales to zero a stable
window after the last request plus the longer of the scale-to-zero grace and the
pod retention (``runtime.scaling.kpa.decide``); :func:`keep_alive_rule` makes that
sum the chosen keep-alive: the window shortened to it, no scale-down delay or
retention, and the grace what is left.
"""

from __future__ import annotations

import math

from runtime.spec.scaling import ScalingRule

__all__ = ["keep_alive_rule"]


def keep_alive_rule(
    rule: ScalingRule, keep: float | None, grace: float
) -> tuple[ScalingRule, float]:
    """(rule, scale-to-zero grace) for a tier whose keep-alive the manager chose as
    ``keep`` seconds: unchanged when None or not shorter than the rule's idle period."""
    idle = rule.window + rule.scale_down_delay + max(grace, rule.scale_to_zero_pod_retention_period)
    if keep is None or keep >= idle:
        return rule, grace
    window = float(min(rule.window, math.ceil(keep)))
    gone = {"window": window, "scale_down_delay": 0.0, "scale_to_zero_pod_retention_period": 0.0}
    short = rule.model_copy(update=gone)
    return short, max(0.0, keep - window)
