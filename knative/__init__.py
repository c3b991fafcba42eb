"""Rendering models into Knative Services and applying them to clusters."""

__all__: list[str] = []
