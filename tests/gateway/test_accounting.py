"""The usage ledger: sums by key and model since a time, one-minute buckets, a day of
retention, label values only from configured names, and ``since`` refused when bad."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.accounting import NO_KEY, RETENTION_MINUTES, UsageLedger, parse_since
from runtime.errors import BadInput

T0 = 1_700_000_040.0  # a minute's start


def ledger() -> tuple[UsageLedger, CollectorRegistry]:
    registry = CollectorRegistry()
    return UsageLedger(registry, ["web", "batch"]), registry


def test_sums_by_key_by_model_and_both_since_a_time() -> None:
    book, registry = ledger()
    book.record("web", "smollm2", 200, 10, 5, T0)
    book.record("web", "minilm", 200, 7, 0, T0 + 30)
    book.record("batch", "smollm2", 500, 3, 0, T0 + 61)
    book.record("web", "smollm2", 429, 0, 0, T0 + 125)
    everything = book.summary(0)
    assert everything["by_key"]["web"] == {
        "requests": 3,
        "errors": 1,
        "input_tokens": 17,
        "output_tokens": 5,
    }
    assert everything["by_model"]["smollm2"] == {
        "requests": 3,
        "errors": 2,
        "input_tokens": 13,
        "output_tokens": 5,
    }
    assert {(r["key"], r["model"]) for r in everything["by_key_model"]} == {
        ("batch", "smollm2"),
        ("web", "minilm"),
        ("web", "smollm2"),
    }
    # ``since`` inside the second minute counts that whole minute, not the first.
    later = book.summary(T0 + 90)
    assert later["since"] == T0 + 60
    assert later["by_key"]["batch"]["requests"] == 1 and later["by_key"]["web"]["requests"] == 1
    assert book.summary(T0 + 3600)["by_key"] == {}
    value = registry.get_sample_value(
        "edgeinfer_key_tokens_total", {"key": "web", "model": "smollm2", "kind": "input"}
    )
    assert value == 10
    errors = registry.get_sample_value(
        "edgeinfer_key_requests_total", {"key": "batch", "model": "smollm2", "outcome": "error"}
    )
    assert errors == 1


def test_a_key_name_nobody_configured_is_never_a_label() -> None:
    book, registry = ledger()
    book.record("made-up", "smollm2", 401, 0, 0, T0)
    book.record("anonymous", "smollm2", 200, 1, 1, T0)
    assert set(book.summary(0)["by_key"]) == {NO_KEY, "anonymous"}
    assert (
        registry.get_sample_value(
            "edgeinfer_key_requests_total",
            {"key": "made-up", "model": "smollm2", "outcome": "error"},
        )
        is None
    )


def test_buckets_older_than_the_retention_are_dropped() -> None:
    book, _ = ledger()
    book.record("web", "m", 200, 1, 1, T0)
    book.record("web", "m", 200, 1, 1, T0 + RETENTION_MINUTES * 60)
    assert book.summary(0)["by_key"]["web"]["requests"] == 1
    assert len(book._minutes) == 1


@pytest.mark.parametrize(
    ("query", "since"),
    [
        (b"", 1000.0 - RETENTION_MINUTES * 60),
        (b"since=1700000000", 1_700_000_000.0),
        (b"since=1700000000.5", 1_700_000_000.5),
        (b"since=2023-11-14T22:13:20Z", 1_700_000_000.0),
        (b"since=2023-11-14T23:13:20%2B01:00", 1_700_000_000.0),
    ],
)
def test_since_is_unix_seconds_or_iso_8601(query: bytes, since: float) -> None:
    assert parse_since(query, 1000.0) == since


@pytest.mark.parametrize(
    "query",
    [
        b"since=yesterday",
        b"since=2023-11-14T22:13:20",  # no zone
        b"since=-1",
        b"since=nan",
        b"since=inf",
        b"until=5",
        b"since=" + b"1" * 2000,
        b"since=\xff",
    ],
)
def test_a_bad_since_is_a_400(query: bytes) -> None:
    with pytest.raises(BadInput):
        parse_since(query, 1000.0)
