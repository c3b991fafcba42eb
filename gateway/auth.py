"""API keys, admin access and body limits, free of any HTTP framework. The caller passes
the environment in; only sha256 digests of secrets are kept, compared in constant time.
With no API keys configured at all, auth is off and every caller is :data:`ANONYMOUS`."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field, SecretStr, model_validator

from gateway.quotas import QuotaBook, TokenQuota
from gateway.ratelimit import FailureLimiter, Limit, RateLimiter
from runtime.errors import PayloadTooLarge, PermissionDenied, Unauthorized
from runtime.spec.frozen import Frozen
from runtime.spec.traffic import Priority

__all__ = ["ANONYMOUS", "ApiKeyConfig", "AuthConfig", "Authenticator", "KeyIdentity"]


class ApiKeyConfig(Frozen):
    """One API key: ``name`` names it in logs and metrics; the secret is ``key`` or the
    environment variable ``key_env``, exactly one. ``models`` None = all models."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    key: SecretStr | None = Field(None, min_length=1)
    key_env: str | None = None
    models: list[str] | None = None
    rate_per_s: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    priority: Priority = Field(Priority.STANDARD, description="the key's requests' class")
    priorities: list[Priority] = Field(
        default_factory=list, description="other classes it may ask for by header"
    )
    fairness_ids: bool = Field(False, description="may name its tenant by the fairness header")
    quota: TokenQuota | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_env is None):
            raise ValueError(f"api key '{self.name}': give exactly one of key or key_env")
        return self


class AuthConfig(Frozen):
    """The ``auth:`` section. ``api_keys_env``: a variable holding ``name:secret[,...]``;
    the admin key guards ``/metrics`` and ``/admin/*``; no rate at all = unlimited."""

    api_keys: list[ApiKeyConfig] = []
    api_keys_env: str | None = None
    admin_key: SecretStr | None = Field(None, min_length=1)
    admin_key_env: str | None = None
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    default_rate_per_s: float | None = Field(None, gt=0)
    default_burst: int | None = Field(None, ge=1)
    failed_auth_rate_per_s: float = Field(
        1.0, gt=0, description="401s per client address per second, then 429"
    )
    failed_auth_burst: int = Field(20, ge=1, description="401s per address before the rate")
    failed_auth_clients: int = Field(
        4096, ge=1, le=1_000_000, description="addresses remembered (least recent dropped)"
    )


@dataclass(frozen=True)
class KeyIdentity:
    """Who made a request: a key's ``name`` (never its secret), the models it may use
    (None = all) and its rate limit (None = unlimited)."""

    name: str
    models: frozenset[str] | None = None
    limit: Limit | None = None
    priority: Priority = Priority.STANDARD
    priorities: frozenset[Priority] = frozenset()
    fairness_ids: bool = False
    quota: TokenQuota | None = None


ANONYMOUS = KeyIdentity("anonymous")
_FAILURES = Limit(1.0, 20)  # AuthConfig's failed_auth_* defaults
_ADMIN = KeyIdentity("admin")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _secret(what: str, key: SecretStr | None, var: str | None, env: Mapping[str, str]) -> str:
    if key is not None and var is None:
        return key.get_secret_value()
    if key is not None or var is None:
        raise ValueError(f"{what}: give the secret or its environment variable, not both")
    if not env.get(var):
        raise ValueError(f"{what}: environment variable {var} is not set or is empty")
    return env[var]


def _limit(what: str, rate: float | None, burst: int | None) -> Limit | None:
    if rate is None and burst is not None:
        raise ValueError(f"{what}: burst needs rate_per_s (or auth.default_rate_per_s)")
    return None if rate is None else Limit(rate, burst or max(1, math.ceil(rate)))


@dataclass(frozen=True)
class Authenticator:
    """Decides who a request is and what it may do; raises the 401/403/413 errors.
    ``keys`` pairs each identity with the sha256 digest of its secret."""

    keys: tuple[tuple[KeyIdentity, bytes], ...]
    admin_digest: bytes | None
    max_body_bytes: int
    default_limit: Limit | None = None
    failure_limit: Limit = _FAILURES
    failure_clients: int = 4096

    @classmethod
    def from_config(cls, config: AuthConfig, environ: Mapping[str, str]) -> Authenticator:
        """Resolve every secret once. A missing or empty variable, a reused name and a
        secret shared by two keys raise ``ValueError`` naming the key and variable."""
        configs = list(config.api_keys)
        if (var := config.api_keys_env) is not None:
            for i, item in enumerate(_secret("api_keys_env", None, var, environ).split(",")):
                name, _, secret = (part.strip() for part in item.partition(":"))
                if not name or not secret:  # never quote the entry: it holds a secret
                    raise ValueError(f"api_keys_env: entry {i + 1} of {var} is not name:secret")
                configs.append(ApiKeyConfig(name=name, key=SecretStr(secret)))
        keys: list[tuple[KeyIdentity, bytes]] = []
        rate, burst = config.default_rate_per_s, config.default_burst
        for k in configs:
            digest = _digest(_secret(f"api key '{k.name}'", k.key, k.key_env, environ))
            if k.name in {ANONYMOUS.name, _ADMIN.name} or any(i.name == k.name for i, _ in keys):
                raise ValueError(f"api key name '{k.name}' is reserved or used twice")
            if any(hmac.compare_digest(d, digest) for _, d in keys):
                raise ValueError(f"api key '{k.name}' has the same secret as another key")
            limit = _limit(f"api key '{k.name}'", k.rate_per_s or rate, k.burst or burst)
            models = None if k.models is None else frozenset(k.models)
            identity = KeyIdentity(
                k.name, models, limit, k.priority, frozenset(k.priorities), k.fairness_ids, k.quota
            )
            keys.append((identity, digest))
        admin, a_key, a_env = None, config.admin_key, config.admin_key_env
        if a_key is not None or a_env is not None:
            admin = _digest(_secret("admin_key", a_key, a_env, environ))
        return cls(
            tuple(keys),
            admin,
            config.max_body_bytes,
            _limit("auth", rate, burst),
            Limit(config.failed_auth_rate_per_s, config.failed_auth_burst),
            config.failed_auth_clients,
        )

    def rate_limiter(self) -> RateLimiter:
        """A limiter with each key's limit; other ids (anonymous) get the default."""
        return RateLimiter({i.name: i.limit for i, _ in self.keys if i.limit}, self.default_limit)

    def quota_book(self) -> QuotaBook:
        """The token usage book of every key with a quota."""
        return QuotaBook({i.name: i.quota for i, _ in self.keys if i.quota is not None})

    def failure_limiter(self) -> FailureLimiter:
        """A limiter of failed authentications (401s) per client address."""
        return FailureLimiter(self.failure_limit, self.failure_clients)

    def authenticate(self, authorization_header: str | None) -> KeyIdentity:
        """The identity behind ``Authorization: Bearer <key>`` (scheme in any case); 401
        when missing, malformed or unknown; :data:`ANONYMOUS` when auth is off."""
        if not self.keys:
            return ANONYMOUS
        digest = _bearer_digest(authorization_header)
        found = next((i for i, known in self.keys if hmac.compare_digest(known, digest)), None)
        if found is None:
            raise Unauthorized("unknown API key: check the key, or ask the operator for one")
        return found

    def authorize(self, identity: KeyIdentity, model: str) -> None:
        """Raise 403 :class:`PermissionDenied` unless ``identity`` may use ``model``."""
        if identity.models is not None and model not in identity.models:
            raise PermissionDenied(
                f"API key '{identity.name}' may not use model '{model}' (allowed: "
                f"{', '.join(sorted(identity.models))}); ask the operator to add it"
            )

    def authenticate_admin(self, authorization_header: str | None) -> KeyIdentity:
        """Gate for ``/metrics`` and ``/admin/*``: with an admin key, 401 for a missing or
        unknown key, 403 for an API key; with none, open only when auth is off, else 403."""
        if self.admin_digest is None:
            if self.keys:
                raise PermissionDenied("admin routes need admin_key: set auth.admin_key(_env)")
            return _ADMIN
        digest = _bearer_digest(authorization_header)
        if hmac.compare_digest(self.admin_digest, digest):
            return _ADMIN
        if any(hmac.compare_digest(known, digest) for _, known in self.keys):
            raise PermissionDenied("admin routes need the admin key, not an API key")
        raise Unauthorized("unknown admin key: send 'Authorization: Bearer <admin key>'")

    def check_body_size(self, content_length: int | None, received: int) -> None:
        """413 when the declared Content-Length or the bytes received so far exceed
        ``max_body_bytes``; call before reading and again as chunks arrive."""
        if (size := max(content_length or 0, received)) > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {size} bytes is over the limit of {self.max_body_bytes} "
                "bytes: send a smaller body, or raise auth.max_body_bytes"
            )


def _bearer_digest(header: str | None) -> bytes:
    if header is None or not header.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":  # never echo it: it may hold a secret
        raise Unauthorized("malformed Authorization header: send 'Authorization: Bearer <key>'")
    return _digest(parts[1])
