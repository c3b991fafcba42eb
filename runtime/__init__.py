"""Everything below the gateway: model specs, runtimes, the worker, scaling, placement.

Imports nothing from ``gateway`` or ``knative`` and nothing at import time: each room
is a subpackage, and the import contract in ``pyproject.toml`` (import-linter) keeps
the arrows pointing one way::

    placement -> scaling -> worker -> (api | backends) -> spec -> (errors, settings)

``errors`` and ``settings`` are the core every room may read.
"""
