"""The access log: one JSON line per request, on the ``edgeinfer.access`` logger.

Fields: ``time`` (ISO 8601, UTC), ``request_id``, ``key`` (the key's name, never its
secret), ``model``, ``tier``, ``role`` (primary or bridge), ``method``, ``route`` (the
fixed route name, never a path a client made up), ``status``, ``latency_ms``,
``queue_ms``, ``cold_start_ms`` (the cold start the request waited on), ``ttft_ms``
(streams), ``input_tokens``, ``output_tokens``. ``edgeinfer serve`` writes the lines
to stdout as they are, one object per line.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.observe import RequestRecord

__all__ = ["ACCESS_LOGGER", "access_line", "log_to_stdout"]

ACCESS_LOGGER = "edgeinfer.access"
log = logging.getLogger(ACCESS_LOGGER)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per line
_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(epoch: float) -> str:
    """``epoch`` as ISO 8601 in UTC with milliseconds; the second's text is cached."""
    whole = int(epoch)
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((epoch - whole) * 1000):03d}Z"


def access_line(record: RequestRecord) -> str:
    """The request's JSON line."""
    return _ENCODER.encode(
        {
            "time": _iso(record.started_epoch),
            "request_id": record.request_id,
            "key": record.key,
            "model": record.model,
            "tier": record.tier,
            "role": record.role,
            "method": record.method,
            "route": record.route,
            "status": record.status,
            "latency_ms": _ms(record.latency),
            "queue_ms": _ms(record.queue_wait),
            "cold_start_ms": _ms(None if record.cold_start is None else record.cold_start.total),
            "ttft_ms": _ms(record.ttft),
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
        }
    )


FLUSH_SECONDS = 0.5  # the longest an access line waits in the buffer
BUFFER_BYTES = 64 * 1024


class _BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines go into a 64 KiB buffer, written out when it fills and every
    :data:`FLUSH_SECONDS` by a daemon thread (as nginx's ``access_log ... buffer=
    flush=``): a write and flush per request cost the gateway a third of its
    throughput on small answers."""

    def flush(self) -> None:  # called by emit after every line: not here
        pass

    def flush_now(self) -> None:
        super().flush()

    def flush_every(self, seconds: float) -> None:
        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.flush_now()

        threading.Thread(target=loop, name="access-log-flush", daemon=True).start()
        atexit.register(self.flush_now)


def log_to_stdout() -> None:
    """``edgeinfer serve``: the access lines go to stdout as they are (not through the
    console log's formatting), and only there, buffered (:class:`_BufferedHandler`)."""
    stream = open(  # lives as long as the process
        sys.stdout.fileno(), "w", buffering=BUFFER_BYTES, closefd=False, encoding="utf-8"
    )
    handler = _BufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.flush_every(FLUSH_SECONDS)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
