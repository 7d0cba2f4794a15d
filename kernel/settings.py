"""One typed settings object, read from the environment.

Every variable is parsed here and nowhere else. A malformed value raises ``SettingsError`` whose
message names the variable, so start-up can stop with one clear line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

__all__ = ["Settings", "SettingsError", "load_settings", "plugins_allowlist"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Process-wide configuration. Build it with :func:`load_settings`."""

    database_url: str | None
    """Owner connection (migrations). ``None`` means: start the embedded PostgreSQL."""
    database_app_url: str | None
    """Runtime-role connection. ``None`` means: derive it from ``database_url``."""
    redis_url: str | None
    """``None`` means: start the embedded Redis."""
    data_dir: Path
    secret_key: str
    plugins_allowlist: frozenset[str] | None
    cors_origins: tuple[str, ...]
    db_pool_size: int
    log_level: str
    runtime_role: str = "businessos_app"
    master_keys: tuple[tuple[int, bytes], ...] = ()
    """(version, 32-byte AES key) pairs beyond version 1 (which is derived from the secret key);
    the highest version seals, every version opens. ``businessos secrets rotate`` re-seals."""
    jwt_keys: tuple[tuple[str, bytes], ...] = ()
    """(kid, Ed25519 seed) pairs; the first signs. Empty: one key derived from the secret key."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) whose X-Forwarded-For is believed for the client address."""
    max_body_bytes: int = 1_048_576
    refresh_token_days: int = 30
    rate_limit_per_minute: int = 600
    """Requests per minute per tenant and principal (auth endpoints have stricter limits)."""
    auth_rate_limit_per_minute: int = 10
    """Requests per minute per client IP to log-in, MFA, registration, refresh and sign-up."""
    ai_allow_private_bases: bool = False
    """Let a tenant's AI ``api_base`` point at loopback and private addresses (development and tests)."""
    ai_timeout_seconds: int = 60
    """How long one AI provider call may take."""
    event_max_attempts: int = 8
    """Attempts of one event delivery (one handler, one event) before it is dead-lettered."""
    event_lease_seconds: int = 300
    """How long a delivery may run before another worker may take it over (its worker is
    presumed dead); a handler is cancelled after half of it."""
    event_sweep_seconds: int = 15
    """How often the worker re-enqueues deliveries that are due but not on the queue (after a
    Redis restart, a crash between commit and enqueue, an expired lease)."""
    metrics_token: str | None = None
    """Bearer token a Prometheus scraper presents to ``/metrics`` (besides an operator token)."""
    log_format: str = "text"
    """``text`` (human lines) or ``json`` (one object a line, with request and tenant ids)."""
    egress_allow_networks: tuple[str, ...] = ()
    """Networks (CIDR) outbound calls may reach although they are not public (``kernel.egress``)."""
    egress_nameservers: tuple[str, ...] = ()
    """DNS servers (``ip`` or ``ip:port``) outbound calls resolve through; empty: the system's."""
    egress_timeout_seconds: int = 30
    """How long one outbound call may take in all: resolution, redirects and reading the body."""
    egress_max_redirects: int = 5
    egress_max_response_bytes: int = 10 * 1024 * 1024

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    def derived_secret(self, purpose: str) -> str:
        """A stable secret for one purpose, derived from the master secret key."""
        return hmac.new(self.secret_key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise SettingsError(f"{name}: scheme must be one of {', '.join(schemes)}, got {parts.scheme!r}")
    if parts.scheme.startswith("postgres") and not (parts.hostname or "host=" in parts.query):
        raise SettingsError(f"{name}: no host in the URL")
    if parts.scheme.startswith("postgres") and not parts.path.strip("/"):
        raise SettingsError(f"{name}: no database name in the URL")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _secret_key(env: Mapping[str, str], data_dir: Path, embedded: bool) -> str:
    raw = env.get("BUSINESSOS_SECRET_KEY", "").strip()
    if raw:
        if len(raw) < 32:
            raise SettingsError("BUSINESSOS_SECRET_KEY: must be at least 32 characters")
        return raw
    if not embedded:
        raise SettingsError(
            "BUSINESSOS_SECRET_KEY: required when DATABASE_URL is set (every replica must share it)"
        )
    # Embedded default: one key per data directory, created on first start and kept private.
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def _jwt_keys(env: Mapping[str, str]) -> tuple[tuple[str, bytes], ...]:
    raw = env.get("BUSINESSOS_JWT_KEYS", "").strip()
    keys = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        kid, _, seed = item.partition(":")
        try:
            key = base64.urlsafe_b64decode(seed + "=" * (-len(seed) % 4))
        except ValueError:
            key = b""
        if not kid or len(key) != 32:
            raise SettingsError(
                "BUSINESSOS_JWT_KEYS: expected kid:base64url(32-byte Ed25519 seed), comma-separated"
            )
        keys.append((kid, key))
    if len({kid for kid, _ in keys}) != len(keys):
        raise SettingsError("BUSINESSOS_JWT_KEYS: a kid appears twice")
    return tuple(keys)


def _master_keys(env: Mapping[str, str]) -> tuple[tuple[int, bytes], ...]:
    name = "BUSINESSOS_MASTER_KEYS"
    keys = []
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        version, _, encoded = item.partition(":")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            number = int(version)
        except ValueError:
            number, key = 0, b""
        if number < 2 or len(key) != 32:
            raise SettingsError(
                f"{name}: expected version:base64url(32-byte key) with versions from 2, comma-separated"
            )
        keys.append((number, key))
    if len({v for v, _ in keys}) != len(keys):
        raise SettingsError(f"{name}: a version appears twice")
    return tuple(sorted(keys))


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not an IP address or network") from None
    return tuple(networks)


def _nameservers(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    from kernel.egress.resolver import parse_nameserver

    servers = []
    for item in filter(None, (part.strip() for part in env.get(name, "").split(","))):
        try:
            parse_nameserver(item)
        except ValueError:
            raise SettingsError(f"{name}: {item!r} is not ip, ip:port or [ipv6]:port") from None
        servers.append(item)
    return tuple(servers)


def plugins_allowlist(env: Mapping[str, str] | None = None) -> frozenset[str] | None:
    """``BUSINESSOS_PLUGINS``: comma-separated plugin names; unset or ``*`` allows every plugin."""
    env = os.environ if env is None else env
    raw = env.get("BUSINESSOS_PLUGINS")
    if raw is None or raw.strip() == "*":
        return None
    return frozenset(p.strip() for p in raw.split(",") if p.strip())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    pg_schemes = ("postgresql", "postgres", "postgresql+asyncpg")
    database_url = _url(env, "DATABASE_URL", pg_schemes)
    database_app_url = _url(env, "DATABASE_APP_URL", pg_schemes)
    if database_app_url and not database_url:
        raise SettingsError("DATABASE_APP_URL: set DATABASE_URL too (the owner connection for migrations)")
    redis_url = _url(env, "REDIS_URL", ("redis", "rediss", "unix"))

    data_dir = Path(env.get("BUSINESSOS_DATA_DIR", "").strip() or "./.businessos").expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise SettingsError(f"BUSINESSOS_DATA_DIR: {data_dir} exists and is not a directory")

    allowlist = plugins_allowlist(env)

    origins = tuple(
        o.strip().rstrip("/") for o in env.get("BUSINESSOS_CORS_ORIGINS", "").split(",") if o.strip()
    )
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise SettingsError(f"BUSINESSOS_CORS_ORIGINS: {origin!r} is not an http(s) origin")

    log_level = env.get("BUSINESSOS_LOG_LEVEL", "INFO").strip().upper()
    if log_level not in _LOG_LEVELS:
        raise SettingsError(f"BUSINESSOS_LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)}")

    log_format = env.get("BUSINESSOS_LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise SettingsError("BUSINESSOS_LOG_FORMAT: must be text or json")
    metrics_token = env.get("BUSINESSOS_METRICS_TOKEN", "").strip() or None
    if metrics_token is not None and len(metrics_token) < 16:
        raise SettingsError("BUSINESSOS_METRICS_TOKEN: must be at least 16 characters")

    runtime_role = env.get("BUSINESSOS_DB_RUNTIME_ROLE", "businessos_app").strip()
    if not runtime_role.isidentifier() or runtime_role.lower() != runtime_role:
        raise SettingsError("BUSINESSOS_DB_RUNTIME_ROLE: must be a lower-case SQL identifier")

    return Settings(
        master_keys=_master_keys(env),
        jwt_keys=_jwt_keys(env),
        trusted_proxies=_networks(env, "BUSINESSOS_TRUSTED_PROXIES"),
        max_body_bytes=_int(env, "BUSINESSOS_MAX_BODY_BYTES", 1_048_576, 1024, 1 << 30),
        refresh_token_days=_int(env, "BUSINESSOS_REFRESH_TOKEN_DAYS", 30, 1, 365),
        rate_limit_per_minute=_int(env, "BUSINESSOS_RATE_LIMIT_PER_MINUTE", 600, 1, 1_000_000),
        auth_rate_limit_per_minute=_int(env, "BUSINESSOS_AUTH_RATE_LIMIT_PER_MINUTE", 10, 1, 1_000_000),
        ai_allow_private_bases=env.get("BUSINESSOS_AI_ALLOW_PRIVATE_BASES", "").strip().lower() in ("1", "true", "yes"),
        ai_timeout_seconds=_int(env, "BUSINESSOS_AI_TIMEOUT_SECONDS", 60, 1, 3600),
        event_max_attempts=_int(env, "BUSINESSOS_EVENT_MAX_ATTEMPTS", 8, 1, 100),
        event_lease_seconds=_int(env, "BUSINESSOS_EVENT_LEASE_SECONDS", 300, 2, 86_400),
        event_sweep_seconds=_int(env, "BUSINESSOS_EVENT_SWEEP_SECONDS", 15, 1, 3600),
        egress_allow_networks=_networks(env, "BUSINESSOS_EGRESS_ALLOW_NETWORKS"),
        egress_nameservers=_nameservers(env, "BUSINESSOS_EGRESS_NAMESERVERS"),
        egress_timeout_seconds=_int(env, "BUSINESSOS_EGRESS_TIMEOUT_SECONDS", 30, 1, 3600),
        egress_max_redirects=_int(env, "BUSINESSOS_EGRESS_MAX_REDIRECTS", 5, 0, 20),
        egress_max_response_bytes=_int(env, "BUSINESSOS_EGRESS_MAX_RESPONSE_BYTES", 10 * 1024 * 1024, 1024, 1 << 31),
        database_url=database_url,
        database_app_url=database_app_url,
        redis_url=redis_url,
        data_dir=data_dir,
        secret_key=_secret_key(env, data_dir, embedded=database_url is None),
        plugins_allowlist=allowlist,
        cors_origins=origins,
        db_pool_size=_int(env, "BUSINESSOS_DB_POOL_SIZE", 10, 1, 500),
        log_level=log_level,
        log_format=log_format,
        metrics_token=metrics_token,
        runtime_role=runtime_role,
    )
