"""What a model is and where it may run: the vocabulary every other room reads.

``model`` (the model spec and config loader, ``bundled.yaml``), ``scaling`` (the
Knative scaling rule), ``knative_bounds`` (Knative's bounds, read by the rule and by the
annotation checker), ``clusters``, ``artifacts`` (where a model's files come from),
``types`` (the neutral request and response types runtimes speak), ``datatypes``
(tensor datatypes), ``grammar`` (JSON Schema to llama.cpp grammar), ``frozen`` (the one
pydantic base), ``placement`` (devices, the GPU-capable runtimes, tiers and placements)
and ``placement_decision`` (the manager's answer with its candidates).
"""
