"""API keys, model permissions, admin access and body limits, as tables of cases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.auth import ANONYMOUS, AuthConfig, Authenticator
from gateway.ratelimit import Limit
from runtime.errors import (
    EdgeInferError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unauthorized,
)

ENV = {"BOB_KEY": "sk-bob", "EXTRA_KEYS": "carol:sk-carol, dave:sk-dave", "ADMIN": "sk-admin"}
KEYS: dict[str, Any] = {
    "api_keys": [
        {"name": "alice", "key": "sk-alice", "models": ["m1", "m2"]},
        {"name": "bob", "key_env": "BOB_KEY"},
    ],
    "api_keys_env": "EXTRA_KEYS",
}


def make(config: dict[str, Any], environ: dict[str, str] | None = None) -> Authenticator:
    return Authenticator.from_config(
        AuthConfig.model_validate(config), ENV if environ is None else environ
    )


def expect_error(
    kind: type[EdgeInferError], status: int, match: str, call: Callable[[], object]
) -> EdgeInferError:
    """``call()`` raises exactly ``kind`` (not a subclass) with ``status`` and ``match``."""
    with pytest.raises(kind, match=match) as err:
        call()
    assert type(err.value) is kind
    assert err.value.status == status
    return err.value


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Bearer sk-alice", "alice"),
        ("bearer sk-alice", "alice"),
        ("BEARER   sk-alice  ", "alice"),
        ("Bearer sk-bob", "bob"),
        ("Bearer sk-carol", "carol"),
        ("Bearer sk-dave", "dave"),
    ],
)
def test_known_keys_authenticate(header: str, name: str) -> None:
    assert make(KEYS).authenticate(header).name == name


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (None, r"missing API key: send 'Authorization: Bearer <key>'"),
        ("", "missing API key"),
        ("   ", "missing API key"),
        ("Bearer", "malformed Authorization header"),
        ("sk-alice", "malformed Authorization header"),
        ("Basic sk-alice", "malformed Authorization header"),
        ("Bearer sk-alice sk-bob", "malformed Authorization header"),
        ("Bearer sk-nobody", "unknown API key"),
        ("Bearer SK-ALICE", "unknown API key"),
        ("Bearer sk-admin", "unknown API key"),
        ("Bearer sk-alice2", "unknown API key"),
    ],
)
def test_bad_headers_are_401_and_never_echo_the_secret(header: str | None, match: str) -> None:
    auth = make({**KEYS, "admin_key_env": "ADMIN"})
    err = expect_error(Unauthorized, 401, match, lambda: auth.authenticate(header))
    assert "sk-" not in err.message.lower()


@pytest.mark.parametrize(
    ("header", "model", "allowed"),
    [
        ("Bearer sk-alice", "m1", True),
        ("Bearer sk-alice", "m2", True),
        ("Bearer sk-alice", "m3", False),
        ("Bearer sk-alice", "M1", False),
        ("Bearer sk-bob", "m3", True),
        ("Bearer sk-carol", "anything", True),
    ],
)
def test_authorize_checks_the_key_model_list(header: str, model: str, allowed: bool) -> None:
    auth = make(KEYS)
    identity = auth.authenticate(header)
    if allowed:
        auth.authorize(identity, model)
    else:
        match = f"API key '{identity.name}' may not use model '{model}'"
        expect_error(PermissionDenied, 403, match, lambda: auth.authorize(identity, model))


def test_secrets_are_kept_only_as_digests() -> None:
    auth = make({**KEYS, "admin_key": "sk-admin"})
    stored = repr(auth).encode() + b"".join(d for _, d in auth.keys) + (auth.admin_digest or b"")
    for secret in (b"sk-alice", b"sk-bob", b"sk-carol", b"sk-admin"):
        assert secret not in stored
    assert all(len(d) == 32 for _, d in auth.keys)
    assert "sk-alice" not in repr(AuthConfig.model_validate(KEYS))


@pytest.mark.parametrize(
    "config",
    [
        {"api_keys": [{"name": "a", "key": "k", "key_env": "K"}]},
        {"api_keys": [{"name": "a"}]},
        {"api_keys": [{"name": "a", "key": ""}]},
        {"api_keys": [{"name": "a:b", "key": "k"}]},
        {"api_keys": [{"name": "a", "key": "k", "secret": "k"}]},
        {"api_keys": [{"name": "a", "key": "k", "rate_per_s": 0}]},
        {"api_keys": [{"name": "a", "key": "k", "burst": 0}]},
        {"admin_key": ""},
        {"max_body_bytes": 0},
        {"api_key": []},
    ],
    ids=[
        "key-and-key-env",
        "no-secret",
        "empty-key",
        "colon-in-name",
        "extra-key-field",
        "zero-rate",
        "zero-burst",
        "empty-admin-key",
        "zero-body-limit",
        "typo-top-level",
    ],
)
def test_invalid_config_is_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AuthConfig.model_validate(config)


@pytest.mark.parametrize(
    ("config", "environ", "match"),
    [
        (KEYS, {"EXTRA_KEYS": "c:x"}, "api key 'bob': environment variable BOB_KEY is not set"),
        (KEYS, {**ENV, "BOB_KEY": ""}, "api key 'bob': environment variable BOB_KEY .* empty"),
        (KEYS, {"BOB_KEY": "x"}, "api_keys_env: environment variable EXTRA_KEYS is not set"),
        (KEYS, {**ENV, "EXTRA_KEYS": "carol:sk-c,sk-d"}, "entry 2 of EXTRA_KEYS is not name:sec"),
        (KEYS, {**ENV, "EXTRA_KEYS": "carol:sk-c,"}, "entry 2 of EXTRA_KEYS"),
        (KEYS, {**ENV, "EXTRA_KEYS": "carol:"}, "entry 1 of EXTRA_KEYS"),
        (KEYS, {**ENV, "EXTRA_KEYS": "alice:sk-x"}, "name 'alice' is reserved or used twice"),
        (KEYS, {**ENV, "EXTRA_KEYS": "admin:sk-x"}, "name 'admin' is reserved"),
        (KEYS, {**ENV, "EXTRA_KEYS": "eve:sk-bob"}, "api key 'eve' has the same secret"),
        ({**KEYS, "admin_key_env": "NOPE"}, ENV, "admin_key: environment variable NOPE"),
        ({"admin_key": "a", "admin_key_env": "ADMIN"}, ENV, "admin_key: give the secret or"),
        ({"default_burst": 3}, ENV, "auth: burst needs rate_per_s"),
        (
            {"api_keys": [{"name": "a", "key": "k", "burst": 2}]},
            {},
            "api key 'a': burst needs rate_per_s",
        ),
    ],
)
def test_resolution_errors_name_the_key_and_variable(
    config: dict[str, Any], environ: dict[str, str], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as err:
        make(config, environ)
    assert "sk-" not in str(err.value)


@pytest.mark.parametrize("header", [None, "", "garbage", "Bearer anything"])
@pytest.mark.parametrize("config", [{}, {"admin_key": "sk-admin"}], ids=["open", "admin-only"])
def test_no_api_keys_means_anonymous(config: dict[str, Any], header: str | None) -> None:
    auth = make(config)
    assert auth.authenticate(header) is ANONYMOUS
    auth.authorize(ANONYMOUS, "any-model")


# (config, header, expected): "ok", or the error class and a message fragment.
ADMIN_CASES = [
    ("admin", "Bearer sk-admin", "ok"),
    ("admin", "bearer sk-admin", "ok"),
    ("admin", None, (Unauthorized, "missing API key")),
    ("admin", "Token sk-admin", (Unauthorized, "malformed")),
    ("admin", "Bearer sk-wrong", (Unauthorized, "unknown admin key")),
    ("admin", "Bearer sk-alice", (PermissionDenied, "need the admin key, not an API key")),
    ("keys-only", "Bearer sk-alice", (PermissionDenied, "admin routes need admin_key")),
    ("keys-only", "Bearer sk-admin", (PermissionDenied, "admin routes need admin_key")),
    ("keys-only", None, (PermissionDenied, "admin routes need admin_key")),
    ("open", None, "ok"),
    ("open", "Bearer whatever", "ok"),
    ("admin-only", "Bearer sk-admin", "ok"),
    ("admin-only", None, (Unauthorized, "missing API key")),
    ("admin-only", "Bearer sk-alice", (Unauthorized, "unknown admin key")),
]
ADMIN_CONFIGS: dict[str, dict[str, Any]] = {
    "admin": {**KEYS, "admin_key_env": "ADMIN"},
    "keys-only": KEYS,
    "open": {},
    "admin-only": {"admin_key": "sk-admin"},
}


@pytest.mark.parametrize(("config", "header", "expected"), ADMIN_CASES)
def test_admin_routes(config: str, header: str | None, expected: Any) -> None:
    auth = make(ADMIN_CONFIGS[config])
    if expected == "ok":
        assert auth.authenticate_admin(header).name == "admin"
    else:
        kind, match = expected
        status = 401 if kind is Unauthorized else 403
        expect_error(kind, status, match, lambda: auth.authenticate_admin(header))


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("limit", "content_length", "received", "too_large"),
    [
        (None, None, 0, False),
        (None, 16 * MIB, 16 * MIB, False),
        (None, 16 * MIB + 1, 0, True),
        (None, None, 16 * MIB + 1, True),
        (None, 10, 16 * MIB + 1, True),  # a lying Content-Length is caught while reading
        (100, 100, 100, False),
        (100, 101, 0, True),
        (100, None, 101, True),
    ],
)
def test_body_limit(
    limit: int | None, content_length: int | None, received: int, too_large: bool
) -> None:
    auth = make({} if limit is None else {"max_body_bytes": limit})
    if not too_large:
        auth.check_body_size(content_length, received)
        return
    match = f"over the limit of {limit or 16 * MIB} bytes"
    expect_error(
        PayloadTooLarge, 413, match, lambda: auth.check_body_size(content_length, received)
    )


@pytest.mark.parametrize(
    ("config", "limits"),
    [
        ({}, {"alice": None, "bob": None, "carol": None}),
        (
            {"default_rate_per_s": 2.5},
            {"alice": Limit(2.5, 3), "bob": Limit(2.5, 3), "carol": Limit(2.5, 3)},
        ),
        (
            {"default_rate_per_s": 1, "default_burst": 5, "over": {"rate_per_s": 0.5}},
            {"alice": Limit(0.5, 5), "bob": Limit(1, 5), "carol": Limit(1, 5)},
        ),
        (
            {"default_rate_per_s": 4, "over": {"burst": 1}},
            {"alice": Limit(4, 1), "bob": Limit(4, 4), "carol": Limit(4, 4)},
        ),
        ({"over": {"rate_per_s": 0.2}}, {"alice": Limit(0.2, 1), "bob": None, "carol": None}),
    ],
)
def test_key_limits_fall_back_to_defaults(
    config: dict[str, Any], limits: dict[str, Limit | None]
) -> None:
    config = dict(config)
    over = config.pop("over", {})
    keys = [{**KEYS["api_keys"][0], **over}, *KEYS["api_keys"][1:]]
    auth = make({**KEYS, **config, "api_keys": keys})
    for name, limit in limits.items():
        assert auth.authenticate(f"Bearer sk-{name}").limit == limit, name


def test_rate_limiter_from_config_limits_each_key_and_anonymous() -> None:
    keys = [{**KEYS["api_keys"][0], "rate_per_s": 0.5, "burst": 1}, *KEYS["api_keys"][1:]]
    limiter = make({**KEYS, "api_keys": keys, "default_rate_per_s": 1, "default_burst": 2})
    rl = limiter.rate_limiter()
    rl.check("alice", 0.0)
    with pytest.raises(RateLimited) as err:
        rl.check("alice", 0.0)
    assert err.value.retry_after == 2.0
    for key_id in ("bob", "carol", "anonymous"):
        rl.check(key_id, 0.0)
        rl.check(key_id, 0.0)
        with pytest.raises(RateLimited) as err:
            rl.check(key_id, 0.0)
        assert err.value.retry_after == 1.0
