"""The one pydantic base for what a user writes (config files, manifests, options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen"]


class Frozen(BaseModel):
    """Immutable once validated, unknown keys refused (a typo is an error, not a
    silently ignored setting), fields settable by name as well as by alias."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
