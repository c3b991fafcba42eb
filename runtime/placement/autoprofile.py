"""Measuring, in the background, the models this machine has no profile of yet.

On a machine's first ``edgeinfer serve`` no model has a profile, so the manager can
only place each on the first runtime it lists. :func:`measure_missing` runs while the
gateway already serves: one model at a time (the quick ones first), it measures every
runtime of that model this build has (``profiler.profile_config``, few requests,
reusing stored profiles of unchanged artifacts) and hands the new profiles to the
manager, which decides again at once (``Manager.profiled``). Models that already have
a profile for every runtime are left alone: a later start measures nothing.
``EDGEINFER_MEASURE_MISSING=0`` turns it off.
"""

from __future__ import annotations

import logging

from runtime.backends.registry import registered_runtimes
from runtime.placement.manager import Manager
from runtime.placement.profiler import profile_config, workload_for
from runtime.placement.profiles import ProfileStore
from runtime.settings import Settings
from runtime.spec.model import ModelConfig, ModelSpec

__all__ = ["MEASURE_REQUESTS", "measure_missing", "unmeasured"]

log = logging.getLogger("edgeinfer.manager")

MEASURE_REQUESTS = 8  # per load point: enough for a first decision, re-measured by `profile`


def unmeasured(config: ModelConfig, store: ProfileStore) -> list[ModelSpec]:
    """Models with a runtime this build has and no stored profile of it; the quick ones
    (embeddings, classifiers) first, generative ones (many tokens a request) last."""
    have = registered_runtimes()
    out = []
    for spec in config.models:
        if spec.endpoint is not None or not spec.runtimes:
            continue
        measured = {p.runtime for p in store.for_model(spec, config.base_dir)}
        if any(r in have and r not in measured for r in spec.runtimes):
            out.append(spec)
    return sorted(out, key=lambda spec: workload_for(spec).generative)


async def measure_missing(
    manager: Manager,
    config: ModelConfig,
    store: ProfileStore,
    settings: Settings,
    *,
    requests: int = MEASURE_REQUESTS,
) -> None:
    """Measure each unmeasured model, then let the manager decide again on it. One
    model's failure is logged as its event and the next is measured."""
    for spec in unmeasured(config, store):
        manager.note(spec.name, "no profile on this machine: measuring its runtimes")
        log.info("measuring %s's runtimes in the background", spec.name)
        try:
            async for outcome in profile_config(
                config, store, settings, models=[spec.name], requests=requests
            ):
                if outcome.status == "skipped":
                    log.info("%s on %s: skipped (%s)", spec.name, outcome.tier, outcome.reason)
        except Exception as exc:  # one model's failure must not stop the others
            log.exception("measuring %s failed", spec.name)
            manager.note(spec.name, f"measuring failed: {exc}")
            continue
        manager.profiled(spec.name, store.for_model(spec, config.base_dir))
