"""What a model is and where it may run: the vocabulary every other room reads.

``model`` (the model spec and config loader, ``bundled.yaml``), ``scaling`` (the
Knative scaling rule), ``clusters``, ``artifacts`` (where a model's files come from),
``types`` (the neutral request and response types runtimes speak), ``datatypes``
(tensor datatypes), ``placement`` (tiers and placements) and ``placement_decision``
(the manager's answer with its candidates).
"""
