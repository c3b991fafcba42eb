"""The access log's buffered handler (gateway.access_log): lines wait in the buffer,
never flushed per line, and come out whole on the periodic flush."""

from __future__ import annotations

import io
import logging
import time

from gateway.access_log import _BufferedHandler


def test_lines_wait_in_the_buffer_and_come_out_on_the_periodic_flush() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    stream._CHUNK_SIZE = 1 << 16  # type: ignore[attr-defined]
    handler = _BufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.access_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info('{"n":1}')
        logger.info('{"n":2}')
        assert raw.getvalue() == b""  # emit flushed nothing
        handler.flush_every(0.05)
        deadline = time.monotonic() + 5
        while raw.getvalue() == b"" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert raw.getvalue() == b'{"n":1}\n{"n":2}\n'
    finally:
        logger.removeHandler(handler)
