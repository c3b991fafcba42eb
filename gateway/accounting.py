"""Usage per API key and model: requests, errors and tokens in and out.

Counted from what the gateway forwarded (``UsageTap``'s counts: the tokens the client
received), into Prometheus (``edgeinfer_key_requests_total{key,model,outcome}``,
``edgeinfer_key_tokens_total{key,model,kind}``) and into one-minute buckets that
``GET /admin/usage?since=T`` sums (``T``: Unix seconds or ISO 8601; the bucket that
holds ``T`` counts whole). Label values are configured key names, ``anonymous`` (auth
off) and ``(none)`` (no valid key), and configured model names, ``-`` or ``(unknown)``:
never a value a client chose. Buckets older than :data:`RETENTION_MINUTES` are dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter

from runtime.errors import BadInput

__all__ = ["NO_KEY", "RETENTION_MINUTES", "UsageLedger", "parse_since"]

NO_KEY = "(none)"
RETENTION_MINUTES = 24 * 60
_FIELDS = ("requests", "errors", "input_tokens", "output_tokens")


class UsageLedger:
    """Counts per (key, model); ``keys`` are the configured key names."""

    def __init__(self, registry: CollectorRegistry, keys: Iterable[str]) -> None:
        self.keys = frozenset(keys) | {"anonymous", NO_KEY}
        self.requests = Counter(
            "edgeinfer_key_requests",
            "Requests per API key name and model; outcome ok (< 400) or error",
            ["key", "model", "outcome"],
            registry=registry,
        )
        self.tokens = Counter(
            "edgeinfer_key_tokens",
            "Tokens per API key name and model: input (prompt) and output (completion)",
            ["key", "model", "kind"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, bool], tuple[Any, Any, Any]] = {}
        # minute -> (key, model) -> [requests, errors, input, output]; oldest first.
        self._minutes: OrderedDict[int, dict[tuple[str, str], list[int]]] = OrderedDict()

    def key_label(self, key: str) -> str:
        return key if key in self.keys else NO_KEY

    def record(
        self, key: str, model: str, status: int, input_tokens: int, output_tokens: int, now: float
    ) -> None:
        """One request of ``model`` (already a metric label) by ``key`` at Unix ``now``."""
        key = self.key_label(key)
        error = status >= 400
        children = self._children.get((key, model, error))
        if children is None:  # label lookups cached: this runs per request
            children = (
                self.requests.labels(key, model, "error" if error else "ok"),
                self.tokens.labels(key, model, "input"),
                self.tokens.labels(key, model, "output"),
            )
            self._children[(key, model, error)] = children
        children[0].inc()
        if input_tokens:
            children[1].inc(input_tokens)
        if output_tokens:
            children[2].inc(output_tokens)
        minute = int(now // 60)
        bucket = self._minutes.get(minute)
        if bucket is None:
            bucket = self._minutes[minute] = {}
            while self._minutes and next(iter(self._minutes)) <= minute - RETENTION_MINUTES:
                self._minutes.popitem(last=False)
        row = bucket.get((key, model))
        if row is None:
            row = bucket[(key, model)] = [0, 0, 0, 0]
        row[0] += 1
        row[1] += error
        row[2] += input_tokens
        row[3] += output_tokens

    def summary(self, since: float) -> dict[str, Any]:
        """Sums since Unix time ``since``: by key, by model, and by both."""
        first = math.floor(since / 60)
        pairs: dict[tuple[str, str], list[int]] = {}
        for minute, bucket in self._minutes.items():
            if minute < first:
                continue
            for pair, row in bucket.items():
                total = pairs.setdefault(pair, [0, 0, 0, 0])
                for i, n in enumerate(row):
                    total[i] += n
        by_key: dict[str, dict[str, int]] = {}
        by_model: dict[str, dict[str, int]] = {}
        for (key, model), row in pairs.items():
            for table, name in ((by_key, key), (by_model, model)):
                sums = table.setdefault(name, dict.fromkeys(_FIELDS, 0))
                for field, n in zip(_FIELDS, row, strict=True):
                    sums[field] += n
        return {
            "since": first * 60,
            "by_key": by_key,
            "by_model": by_model,
            "by_key_model": [
                {"key": key, "model": model, **dict(zip(_FIELDS, row, strict=True))}
                for (key, model), row in sorted(pairs.items())
            ],
        }


def parse_since(query: bytes, now: float) -> float:
    """``since`` from a query string: Unix seconds or ISO 8601 with a zone; missing:
    the ledger's whole retention. 400 for anything else."""
    if len(query) > 1024:
        raise BadInput("the query string is over 1024 bytes")
    try:
        values = parse_qs(query.decode("ascii"), strict_parsing=False, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise BadInput("the query string must be ASCII key=value pairs") from None
    unknown = set(values) - {"since"}
    if unknown:
        raise BadInput(f"unknown query parameter {sorted(unknown)[0]!r}: only 'since' is taken")
    raw = values.get("since", [None])[-1]
    if raw is None:
        return now - RETENTION_MINUTES * 60
    try:
        since = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise BadInput(
                "since: give Unix seconds or an ISO 8601 time such as 2026-01-31T12:00:00Z"
            ) from None
        if parsed.tzinfo is None:
            raise BadInput("since: an ISO 8601 time needs a zone (Z or +hh:mm)") from None
        since = parsed.timestamp()
    if not math.isfinite(since) or since < 0:
        raise BadInput("since: must be a time at or after 1970")
    return since
