"""Failover across an alias's ordered models: one retry, on the next model, only while
no byte of the answer has reached the client.

Each attempt's ``send`` is an :class:`Attempt`: it adds ``x-edgeinfer-target`` (the
model that answered) to the answer's head and, while a retry is still possible, holds
the head back until the answer's first body bytes. So a 5xx answer, an error raised
before the answer began (no replica, a replica that failed), a stream whose first
event is an error event (it failed before its first token), or - with
``stall_seconds`` - a stream whose first bytes do not come in time, is dropped unseen
and the request goes to the next model. Once a body byte went out, the answer is the
client's whatever follows: a later failure cuts it, as without failover.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.types import Message, Send

from runtime.api.openai import SSE_DATA
from runtime.errors import EdgeInferError

__all__ = ["TARGET_HEADER", "Attempt", "Outcome", "in_order"]

TARGET_HEADER = b"x-edgeinfer-target"
# A stream's error event (runtime.api.openai.sse_event of an error body), as the worker
# and the gateway's proxy send it when a stream fails.
_ERROR_EVENT = SSE_DATA + b'{"error"'


class Attempt:
    """The ``send`` of one attempt on ``model``; ``retry``: whether a next model is left
    (then the head waits for the first body bytes, and a 5xx head drops the answer)."""

    def __init__(self, send: Send, model: str, *, retry: bool) -> None:
        self._send = send
        self.model = model
        self.retry = retry
        self.head: Message | None = None
        self.sent = False  # a byte of the answer reached the client
        self.dropped = False  # a 5xx answer dropped for the next model
        self.began = asyncio.Event()  # the first body bytes came, or the answer was dropped

    async def send(self, message: Message) -> None:
        if self.dropped:
            return
        if message["type"] == "http.response.start":
            tagged = [*message["headers"], (TARGET_HEADER, self.model.encode())]
            head = {**message, "headers": tagged}
            if not self.retry:
                self.sent = True
                await self._send(head)
            elif message["status"] >= 500:
                self.dropped = True
                self.began.set()
            else:
                self.head = head
            return
        if self.head is not None and not self.sent:
            if message.get("more_body", False) and not message.get("body"):
                return  # nothing to show yet
            if message.get("body", b"").startswith(_ERROR_EVENT):
                self.dropped = True  # a stream that fails before its first token
                self.began.set()
                return
            self.sent = True
            self.began.set()
            await self._send(self.head)
        await self._send(message)


@dataclass(frozen=True)
class Outcome:
    """How a request ended: its ``status``, the model that answered, and the models
    that failed before it (with why)."""

    status: int
    model: str
    failed: tuple[tuple[str, str], ...] = ()


async def in_order(
    models: Sequence[str],
    attempt: Callable[[str, Send], Awaitable[int]],
    send: Send,
    *,
    stall_seconds: float | None = None,
) -> Outcome:
    """Serve by ``attempt(model, send)`` on ``models[0]``, and once more on
    ``models[1]`` when the first fails unseen (5xx, an error of status >= 500 raised
    before the answer began, or no first body bytes within ``stall_seconds``)."""
    tried = list(models[:2])
    failed: list[tuple[str, str]] = []
    for i, model in enumerate(tried):
        held = Attempt(send, model, retry=i + 1 < len(tried))
        task = asyncio.ensure_future(attempt(model, held.send))
        try:
            if held.retry and stall_seconds is not None:
                began = asyncio.ensure_future(held.began.wait())
                try:
                    await asyncio.wait(
                        {task, began}, timeout=stall_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    began.cancel()
                if not task.done() and not held.began.is_set():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EdgeInferError):
                        await task
                    failed.append((model, f"no first byte in {stall_seconds:g} s"))
                    continue
            status = await task
        except EdgeInferError as exc:
            if not held.retry or held.sent or exc.status < 500:
                raise
            failed.append((model, f"{exc.status} {exc.code}"))
            continue
        finally:
            if not task.done():
                task.cancel()
        if held.dropped:
            failed.append((model, f"answered {status}"))
            continue
        return Outcome(status, model, tuple(failed))
    raise AssertionError("unreachable: the last attempt always returns or raises")
