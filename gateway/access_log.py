"""The access log: one JSON line per request, on the ``edgeinfer.access`` logger.

Fields: ``time`` (ISO 8601, UTC), ``request_id``, ``key`` (the key's name, never its
secret), ``model``, ``tier``, ``role`` (primary or bridge), ``method``, ``route`` (the
fixed route name, never a path a client made up), ``status``, ``latency_ms``,
``queue_ms``, ``cold_start_ms`` (the cold start the request waited on), ``ttft_ms``
(streams), ``input_tokens``, ``output_tokens``. ``edgeinfer serve`` writes the lines
to stdout as they are, one object per line, through :class:`BufferedLines` (not the
logging machinery: a ``LogRecord`` per request was a tenth of the gateway's CPU on
small answers); elsewhere (tests, embedding) they go to the logger at INFO.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gateway.observe import RequestRecord

__all__ = ["ACCESS_LOGGER", "BufferedLines", "access_line", "log_to_stdout", "write"]

ACCESS_LOGGER = "edgeinfer.access"
log = logging.getLogger(ACCESS_LOGGER)

# JSON's string quoting (the C encoder): strings here are configured names and checked
# ids, but a line must stay one valid object whatever a configuration holds.
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(epoch: float) -> str:
    """``epoch`` as ISO 8601 in UTC with milliseconds; the second's text is cached."""
    whole = int(epoch)
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((epoch - whole) * 1000):03d}Z"


# One line, in json's own spelling of each value: strings quoted by the C encoder,
# milliseconds with three decimals, null for what is missing. Written by hand (one
# format of one tuple, no dict handed to an encoder): it runs for every request.
_LINE = (
    '{"time":"%s","request_id":%s,"key":%s,"model":%s,"tier":%s,"role":%s,"method":%s,'
    '"route":%s,"status":%d,"latency_ms":%s,"queue_ms":%s,"cold_start_ms":%s,'
    '"ttft_ms":%s,"input_tokens":%d,"output_tokens":%d}'
)


def access_line(record: RequestRecord) -> str:
    """The request's JSON line."""
    q = _quote
    latency, queue, cold, ttft = record.latency, record.queue_wait, record.cold_start, record.ttft
    return _LINE % (
        _iso(record.started_epoch),
        q(record.request_id),
        q(record.key),
        q(record.model),
        "null" if record.tier is None else q(record.tier),
        "null" if record.role is None else q(record.role),
        q(record.method),
        q(record.route),
        record.status,
        "null" if latency is None else "%.3f" % (latency * 1000),
        "null" if queue is None else "%.3f" % (queue * 1000),
        "null" if cold is None else "%.3f" % (cold.total * 1000),
        "null" if ttft is None else "%.3f" % (ttft * 1000),
        record.input_tokens,
        record.output_tokens,
    )


FLUSH_SECONDS = 0.5  # the longest an access line waits in the buffer
BUFFER_BYTES = 64 * 1024


class BufferedLines:
    """Lines go into ``stream``'s buffer (64 KiB for stdout), written out when it fills
    and every :data:`FLUSH_SECONDS` by a daemon thread (as nginx's ``access_log ...
    buffer= flush=``): a write and flush per request cost the gateway a third of its
    throughput on small answers. A lock keeps the flushing thread off a half-written
    line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def flush_every(self, seconds: float) -> None:
        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.flush()

        threading.Thread(target=loop, name="access-log-flush", daemon=True).start()
        atexit.register(self.flush)


_lines: list[BufferedLines] = []  # the process's direct sink, once log_to_stdout ran


def write(record: RequestRecord) -> None:
    """The request's line: to the direct sink when there is one, else to the logger
    when it takes INFO (nothing is formatted when neither wants it)."""
    if _lines:
        _lines[0].write(access_line(record))
    elif log.isEnabledFor(logging.INFO):
        log.info("%s", access_line(record))


def log_to_stdout() -> None:
    """``edgeinfer serve``: the access lines go to stdout as they are (not through the
    console log's formatting), and only there, buffered (:class:`BufferedLines`)."""
    stream = open(  # lives as long as the process
        sys.stdout.fileno(), "w", buffering=BUFFER_BYTES, closefd=False, encoding="utf-8"
    )
    sink = BufferedLines(stream)
    sink.flush_every(FLUSH_SECONDS)
    _lines[:] = [sink]
