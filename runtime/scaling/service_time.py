"""A model's measured service time, and the deadline check it makes possible.

The pool feeds :class:`ServiceTime` each request's time on a replica (from slot taken
to slot given back) as it releases the slot; :func:`deadline_problem` is the pure check
the pool runs before a request joins the queue: when the requests served before it,
spread over the model's slots, and its own service cannot fit before its deadline, the
request is refused at once (504) rather than left to time out in the queue.
"""

from __future__ import annotations

import math

__all__ = ["ServiceTime", "deadline_problem"]


class ServiceTime:
    """An exponentially weighted moving average of service seconds; ``alpha`` is the
    weight of the newest sample. None until the first sample."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.seconds: float | None = None
        self.samples = 0

    def record(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return  # a clock that went backwards teaches nothing
        self.samples += 1
        if self.seconds is None:
            self.seconds = seconds
        else:
            self.seconds += self.alpha * (seconds - self.seconds)


def deadline_problem(
    *, ahead: int, slots: int, service: float | None, left: float, model: str
) -> str | None:
    """Why a request with ``left`` seconds to its deadline cannot be served in time, or
    None when it may: ``ahead`` requests go before it on ``slots`` parallel slots, each
    taking ``service`` seconds (None: not measured yet, never refused). The estimate is
    a lower bound (the requests in flight are taken to end at once), so a request is
    refused only when its deadline surely passes first."""
    if service is None or slots <= 0:
        return None
    waves = ahead // slots + 1  # its own service included
    need = waves * service
    if need <= left:
        return None
    return (
        f"this request to model {model!r} cannot meet its deadline: {ahead} requests "
        f"are ahead of it on {slots} slots at {service:.3f} s each (measured), about "
        f"{need:.3f} s, but only {max(0.0, left):.3f} s are left; retry later or with a "
        "longer deadline"
    )
