"""The access log (gateway.access_log): lines wait in the buffer, never flushed per
line, and come out whole on the periodic flush; each line is the JSON object the
record holds, whatever its strings hold."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from gateway import access_log
from gateway.access_log import BufferedLines, access_line
from gateway.observe import RequestRecord
from gateway.tracing import UNTRACED
from runtime.scaling.replica import ColdStart


def _record(**fields: object) -> RequestRecord:
    record = RequestRecord("abc", "POST", "/v1/embeddings", 0.0, 1_700_000_000.25, UNTRACED)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_lines_wait_in_the_buffer_and_come_out_on_the_periodic_flush() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=False)
    stream._CHUNK_SIZE = 1 << 16  # type: ignore[attr-defined]
    lines = BufferedLines(stream)
    lines.write('{"n":1}')
    lines.write('{"n":2}')
    assert raw.getvalue() == b""  # nothing flushed per line
    lines.flush_every(0.05)
    deadline = time.monotonic() + 5
    while raw.getvalue() == b"" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert raw.getvalue() == b'{"n":1}\n{"n":2}\n'


def test_a_line_is_the_records_json_object() -> None:
    record = _record(
        key="team-a",
        model="minilm",
        tier="onnx-cpu",
        role="primary",
        route="/v1/embeddings",
        status=200,
        latency=0.0123456,
        queue_wait=0.0001,
        cold_start=ColdStart(phases={"spawn": 0.5, "load": 0.25}, finished_at=1.0),
        ttft=None,
        input_tokens=7,
        output_tokens=0,
    )
    assert json.loads(access_line(record)) == {
        "time": "2023-11-14T22:13:20.250Z",
        "request_id": "abc",
        "key": "team-a",
        "model": "minilm",
        "tier": "onnx-cpu",
        "role": "primary",
        "method": "POST",
        "route": "/v1/embeddings",
        "status": 200,
        "latency_ms": 12.346,
        "queue_ms": 0.1,
        "cold_start_ms": 750.0,
        "ttft_ms": None,
        "input_tokens": 7,
        "output_tokens": 0,
    }


def test_quotes_and_control_characters_in_a_name_keep_the_line_one_object() -> None:
    name = 'a "quoted"\nname\\'
    line = access_line(_record(key=name, model="m\x00"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["key"] == name and parsed["model"] == "m\x00"


def test_without_a_sink_lines_go_to_the_logger_at_info(caplog: pytest.LogCaptureFixture) -> None:
    saved = list(access_log._lines)
    access_log._lines.clear()
    try:
        with caplog.at_level(logging.INFO, logger=access_log.ACCESS_LOGGER):
            access_log.write(_record(status=404))
        (entry,) = [r for r in caplog.records if r.name == access_log.ACCESS_LOGGER]
        assert json.loads(entry.getMessage())["status"] == 404
    finally:
        access_log._lines[:] = saved
