"""gateway.traffic (a request's class and tenant from its key and headers) and
gateway.quotas (token quotas per key, on a FAKE clock: plain numbers)."""

from __future__ import annotations

import pytest

from gateway.auth import AuthConfig, Authenticator, KeyIdentity
from gateway.quotas import QuotaBook, TokenQuota
from gateway.traffic import TrafficConfig, ticket
from runtime.errors import BadInput, PermissionDenied, QuotaExceeded
from runtime.scaling.queue import Ticket
from runtime.spec.traffic import Priority

CFG = TrafficConfig(sheddable_headroom=2)
BATCH = KeyIdentity("batch", priority=Priority.SHEDDABLE)
APP = KeyIdentity(
    "app", priorities=frozenset({Priority.CRITICAL, Priority.SHEDDABLE}), fairness_ids=True
)

# (identity, priority header, fairness header) -> ticket
TICKETS = [
    (BATCH, None, None, Ticket(Priority.SHEDDABLE, "batch", 2)),
    (BATCH, "sheddable", None, Ticket(Priority.SHEDDABLE, "batch", 2)),
    (APP, None, None, Ticket(Priority.STANDARD, "app", 0)),
    (APP, " Critical ", None, Ticket(Priority.CRITICAL, "app", 0)),
    (APP, None, "user-7", Ticket(Priority.STANDARD, "app/user-7", 0)),
    (APP, "sheddable", "u:1", Ticket(Priority.SHEDDABLE, "app/u:1", 2)),
]


@pytest.mark.parametrize(("identity", "priority", "fairness", "expected"), TICKETS)
def test_ticket(
    identity: KeyIdentity, priority: str | None, fairness: str | None, expected: Ticket
) -> None:
    assert ticket(identity, CFG, priority, fairness) == expected


# (identity, priority header, fairness header) -> error, words in its message
REFUSED = [
    (BATCH, "critical", None, PermissionDenied, ["x-edgeinfer-priority", "'batch'", "sheddable"]),
    (APP, "urgent", None, BadInput, ["x-edgeinfer-priority", "critical, standard, sheddable"]),
    (BATCH, None, "u1", PermissionDenied, ["x-edgeinfer-fairness-id", "may not set"]),
    (APP, None, "", BadInput, ["x-edgeinfer-fairness-id", "1 to 64"]),
    (APP, None, "a" * 65, BadInput, ["x-edgeinfer-fairness-id"]),
    (APP, None, "bad id\r\n", BadInput, ["x-edgeinfer-fairness-id"]),
    (APP, None, "ünï", BadInput, ["x-edgeinfer-fairness-id"]),
]


@pytest.mark.parametrize(("identity", "priority", "fairness", "error", "words"), REFUSED)
def test_ticket_refused(
    identity: KeyIdentity,
    priority: str | None,
    fairness: str | None,
    error: type[Exception],
    words: list[str],
) -> None:
    with pytest.raises(error) as caught:
        ticket(identity, CFG, priority, fairness)
    for word in words:
        assert word in str(caught.value)


def test_key_config_carries_class_and_quota() -> None:
    auth = Authenticator.from_config(
        AuthConfig.model_validate(
            {
                "api_keys": [
                    {
                        "name": "batch",
                        "key": "sk-batch-0123456789",
                        "priority": "sheddable",
                        "quota": {"output_tokens_per_minute": 10},
                    },
                    {"name": "app", "key": "sk-app-0123456789", "priorities": ["critical"]},
                ]
            }
        ),
        {},
    )
    batch = auth.authenticate("Bearer sk-batch-0123456789")
    app = auth.authenticate("Bearer sk-app-0123456789")
    assert batch.priority is Priority.SHEDDABLE and app.priorities == {Priority.CRITICAL}
    assert set(auth.quota_book().quotas) == {"batch"}


def test_quotas_count_input_and_output_separately_per_window() -> None:
    book = QuotaBook(
        {
            "k": TokenQuota(input_tokens_per_minute=100, output_tokens_per_day=30),
            "free": TokenQuota(),
        }
    )
    assert set(book.quotas) == {"k"}  # a quota with nothing set limits nothing
    now = 120.0  # the start of a minute
    book.charge("k", now, 99, 10)
    book.check("k", now + 1)  # 99 of 100 input tokens: one more request may go
    book.charge("k", now + 1, 1, 10)
    with pytest.raises(QuotaExceeded) as full:
        book.check("k", now + 2)
    assert "input_tokens_per_minute" in full.value.message and "100 of 100" in full.value.message
    assert full.value.retry_after == 58
    book.check("k", now + 60)  # the next minute
    book.charge("k", now + 60, 0, 9)
    book.check("k", now + 61)  # 29 of 30 output tokens today
    book.charge("k", now + 61, 0, 1)
    with pytest.raises(QuotaExceeded) as day:
        book.check("k", now + 3600)
    assert "output_tokens_per_day" in day.value.message
    book.check("free", now)
    book.charge("nobody", now, 5, 5)  # a key with no quota is not tracked
    assert book.used("k", "output", "day", now + 86400) == 0
