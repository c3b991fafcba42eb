"""Refusing sheddable requests cheaply (issue 18): under a flood of them, each refusal
must cost the front door as little as possible, or the refusals themselves slow the
requests the model does serve.

:func:`saturated` decides from the pool's replicas alone, before a request's body is
read where its model is in the path (OIP) and before any forwarding work where it is
in the body (OpenAI, Ollama): the very condition under which the pool's own
``acquire`` would refuse the ticket (a ready replica, and no slot the ticket may take).
Where it cannot tell (another replica source, an alias), the request goes on and the
pool decides. :class:`ShedAnswers` holds each refusal's bytes, built once per API
shape and model.
"""

from __future__ import annotations

import json

from starlette.types import Send

from runtime.api.render import error_body
from runtime.errors import Shed
from runtime.scaling.pool import ModelPool
from runtime.scaling.queue import Ticket, shed_message
from runtime.scaling.source import ReplicaPool
from runtime.spec.traffic import Priority

__all__ = ["ShedAnswers", "check", "saturated"]

_Head = list[tuple[bytes, bytes]]


def saturated(pool: ReplicaPool, ticket: Ticket) -> bool:
    """Whether ``pool`` would refuse a sheddable ``ticket`` at once
    (:meth:`ModelPool.saturated`); False for a pool it cannot see into."""
    return isinstance(pool, ModelPool) and pool.saturated(ticket)


def check(pool: ReplicaPool, ticket: Ticket) -> None:
    """:class:`Shed` when ``ticket`` is sheddable and ``pool`` is :func:`saturated`."""
    if ticket.priority is Priority.SHEDDABLE and saturated(pool, ticket):
        model = pool.spec.name
        raise Shed(shed_message(model), model=model)


class ShedAnswers:
    """Each refusal's head and body, built once per (API shape, model): a bounded set
    (configured models times three shapes)."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], tuple[_Head, bytes]] = {}

    async def send(self, path: str, exc: Shed, request_id: tuple[bytes, bytes], send: Send) -> None:
        shape = "/v2" if path.startswith("/v2") else "/api/" if path.startswith("/api/") else ""
        answer = self._answers.get((shape, exc.model))
        if answer is None:
            body = json.dumps(error_body(path, exc), separators=(",", ":")).encode()
            after = str(max(1, round(exc.retry_after or 1))).encode()
            head = [(b"content-type", b"application/json"), (b"retry-after", after)]
            answer = self._answers[(shape, exc.model)] = (head, body)
        head, body = answer
        start = {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [*head, request_id],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})
