"""Which priority class and which tenant a request waits as (the queue's
:class:`~runtime.scaling.queue.Ticket`), from its key and two optional headers.

A key has a class (``priority``, standard unless set) and may be allowed to ask for
others per request (``priorities``) by the priority header; a key with
``fairness_ids: true`` may name the tenant it shares fairly for (an app's own users)
by the fairness header. Both headers are hostile until checked: a class the key may
not use is 403 and an unknown one 400, each naming the header; a fairness id is 1 to
64 characters of ``[A-Za-z0-9_.:-]`` and is scoped under the key's name (one key can
never take another key's turn). The ids live only while their requests queue (the
queue's bound bounds them) and are never a metric label.
"""

from __future__ import annotations

import re

from pydantic import Field

from gateway.auth import KeyIdentity
from runtime.errors import BadInput, PermissionDenied
from runtime.scaling.queue import Ticket
from runtime.spec.frozen import Frozen
from runtime.spec.traffic import Priority

__all__ = ["TrafficConfig", "ticket"]

_FAIRNESS_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HEADER = r"^[a-z0-9-]{1,64}$"


class TrafficConfig(Frozen):
    """The ``gateway: traffic:`` section."""

    priority_header: str = Field(
        "x-edgeinfer-priority", pattern=_HEADER, description="asks for a priority class"
    )
    fairness_header: str = Field(
        "x-edgeinfer-fairness-id", pattern=_HEADER, description="names the tenant to be fair to"
    )
    sheddable_headroom: int = Field(
        0,
        ge=0,
        le=1 << 20,
        description="slots of a model a sheddable request leaves free for the other classes",
    )


def ticket(
    identity: KeyIdentity, config: TrafficConfig, priority: str | None, fairness_id: str | None
) -> Ticket:
    """The request's ticket: its key's class unless the priority header asks for one
    the key may use; its tenant the key, or the key's fairness id."""
    chosen = identity.priority
    if priority is not None:
        try:
            chosen = Priority(priority.strip().lower())
        except ValueError:
            raise BadInput(
                f"header {config.priority_header}: must be one of "
                f"{', '.join(p.value for p in Priority)}"
            ) from None
        if chosen is not identity.priority and chosen not in identity.priorities:
            allowed = sorted({identity.priority.value, *(p.value for p in identity.priorities)})
            raise PermissionDenied(
                f"header {config.priority_header}: API key '{identity.name}' may not ask for "
                f"'{chosen.value}' (allowed: {', '.join(allowed)}); leave the header out"
            )
    tenant = identity.name
    if fairness_id is not None:
        if not identity.fairness_ids:
            raise PermissionDenied(
                f"header {config.fairness_header}: API key '{identity.name}' may not set a "
                "fairness id; leave the header out"
            )
        if not _FAIRNESS_ID.match(fairness_id):
            raise BadInput(
                f"header {config.fairness_header}: 1 to 64 characters of letters, digits "
                "and _.:- only"
            )
        tenant = f"{identity.name}/{fairness_id}"
    headroom = config.sheddable_headroom if chosen is Priority.SHEDDABLE else 0
    return Ticket(chosen, tenant, headroom)
