"""Configuration read once from the environment and validated at start-up.

Every variable carries the prefix ``KLARNA_APP_`` except ``DATABASE_URL`` and
``KLARNA_BASE_URL`` (the conventional names). See the README's settings table.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from plugin.http import Bounds
from plugin.saleor.urls import AllowList, BadSaleorUrl, SaleorUrl
from plugin.saleor.urls import parse as parse_saleor_url

PREFIX = "KLARNA_APP_"
T = TypeVar("T", int, float)
APP_ENVIRONMENTS = ("development", "production")


def _default_instance() -> Path:
    """Not the working directory: the checkout's ``instance/`` from source, else the user's data folder."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations").is_dir():
        return checkout / "instance"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "klarna-om"


DEFAULT_INSTANCE = _default_instance()
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """The environment does not describe a runnable app."""


@dataclass(frozen=True)
class Settings:
    public_url: str = "http://127.0.0.1:5000"
    database_url: str = ""
    secret_keys: tuple[str, ...] = ()
    allowed_saleor_urls: tuple[str, ...] = ()
    log_level: str = "INFO"
    production: bool = False
    instance_path: Path = field(default=DEFAULT_INSTANCE)
    klarna_base_url: str | None = None
    max_body_bytes: int = 1024 * 1024
    worker_in_process: bool = True
    job_lease_seconds: int = 60
    worker_concurrency: int = 32  # jobs wait mostly on Klarna and Saleor: enough in flight for 300 ms answers
    http_timeout: float = 10.0
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    klarna_rate_per_second: float = 25.0
    db_pool_size: int = 10
    # Outgoing calls to a Saleor (its URL comes from outside): see plugin/http.py and the README.
    saleor_ip_filter: bool = True
    saleor_allow_loopback: bool = False
    http_deadline: float = 20.0
    http_max_response_bytes: int = 4 * 1024 * 1024
    register_per_minute: int = 10
    max_installations_per_host: int = 5
    delivery_dedupe_seconds: int = 600
    retention_days: float = 30.0
    metrics_token: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) and validate them."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str = "") -> str:
            return env.get(PREFIX + name, default).strip()

        instance = Path(get("INSTANCE_PATH") or DEFAULT_INSTANCE).resolve()
        app_env = get("ENV", "development").lower()
        if app_env not in APP_ENVIRONMENTS:
            raise ConfigError(f"{PREFIX}ENV must be development or production, got {get('ENV')!r}")
        settings = cls(
            public_url=get("PUBLIC_URL", cls.public_url),
            database_url=env.get("DATABASE_URL", "").strip(),
            secret_keys=_split(get("SECRET_KEYS")),
            allowed_saleor_urls=_split(get("ALLOWED_SALEOR_URLS")),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            production=app_env == "production",
            instance_path=instance,
            klarna_base_url=env.get("KLARNA_BASE_URL", "").strip() or None,
            max_body_bytes=_int(get("MAX_BODY_BYTES"), cls.max_body_bytes, "MAX_BODY_BYTES"),
            worker_in_process=get("IN_PROCESS_WORKER", "1") not in ("0", "false", "no"),
            job_lease_seconds=_int(get("JOB_LEASE_SECONDS"), cls.job_lease_seconds, "JOB_LEASE_SECONDS"),
            worker_concurrency=_int(get("WORKER_CONCURRENCY"), cls.worker_concurrency, "WORKER_CONCURRENCY"),
            max_attempts=_int(get("MAX_ATTEMPTS"), cls.max_attempts, "MAX_ATTEMPTS"),
            klarna_rate_per_second=_int(get("KLARNA_RATE_PER_SECOND"), 25, "KLARNA_RATE_PER_SECOND"),
            db_pool_size=_int(get("DB_POOL_SIZE"), cls.db_pool_size, "DB_POOL_SIZE"),
            retry_base_seconds=_float(get("RETRY_BASE_SECONDS"), cls.retry_base_seconds, "RETRY_BASE_SECONDS"),
            saleor_ip_filter=_bool(get("SALEOR_IP_FILTER"), True, "SALEOR_IP_FILTER"),
            saleor_allow_loopback=_bool(get("SALEOR_ALLOW_LOOPBACK"), False, "SALEOR_ALLOW_LOOPBACK"),
            http_deadline=_float(get("HTTP_DEADLINE"), cls.http_deadline, "HTTP_DEADLINE"),
            http_max_response_bytes=_int(
                get("HTTP_MAX_RESPONSE_BYTES"), cls.http_max_response_bytes, "HTTP_MAX_RESPONSE_BYTES"
            ),
            register_per_minute=_int(get("REGISTER_PER_MINUTE"), cls.register_per_minute, "REGISTER_PER_MINUTE"),
            max_installations_per_host=_int(
                get("MAX_INSTALLATIONS_PER_HOST"), cls.max_installations_per_host, "MAX_INSTALLATIONS_PER_HOST"
            ),
            delivery_dedupe_seconds=_int(
                get("DELIVERY_DEDUPE_SECONDS"), cls.delivery_dedupe_seconds, "DELIVERY_DEDUPE_SECONDS"
            ),
            retention_days=_float(get("RETENTION_DAYS"), cls.retention_days, "RETENTION_DAYS"),
            metrics_token=get("METRICS_TOKEN"),
        )
        return settings.validated()

    def validated(self) -> Settings:
        """Check every field; fill the embedded defaults (SQLite file, generated secret)."""
        url = urlsplit(self.public_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"{PREFIX}PUBLIC_URL must be an absolute http(s) URL, got {self.public_url!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        for entry in self.allowed_saleor_urls:
            try:
                AllowList((entry,))
            except BadSaleorUrl as exc:
                raise ConfigError(f"{PREFIX}ALLOWED_SALEOR_URLS: bad entry {entry!r}: {exc}") from None
        if self.production and not self.allowed_saleor_urls:
            # Saleor's own rule for outgoing calls: without a list of known Saleors, refuse every
            # address that is not public (the app would otherwise call into its own network).
            if not self.saleor_ip_filter:
                raise ConfigError(
                    f"production needs {PREFIX}ALLOWED_SALEOR_URLS, or {PREFIX}SALEOR_IP_FILTER on (the default)"
                )
            if self.saleor_allow_loopback:
                raise ConfigError(
                    f"{PREFIX}SALEOR_ALLOW_LOOPBACK is for local development; in production it needs "
                    f"{PREFIX}ALLOWED_SALEOR_URLS"
                )
        if self.metrics_token and len(self.metrics_token) < 16:
            raise ConfigError(f"{PREFIX}METRICS_TOKEN must be at least 16 characters")
        settings = self
        if not settings.database_url:
            if settings.production:
                raise ConfigError("DATABASE_URL is required in production")
            settings = replace(settings, database_url=f"sqlite:///{settings.instance_path / 'klarna-om.sqlite3'}")
        if not settings.secret_keys:
            if settings.production:
                raise ConfigError(
                    f"{PREFIX}SECRET_KEYS is required in production (comma-separated; the first encrypts)"
                )
            settings = replace(settings, secret_keys=(_instance_secret(settings.instance_path),))
        for key in settings.secret_keys:
            if len(key) < 32:
                raise ConfigError(f"{PREFIX}SECRET_KEYS: every key must be at least 32 characters")
        return settings

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    def saleor_url_allowed(self, saleor_api_url: str | SaleorUrl) -> bool:
        """An empty allowlist admits any Saleor; entries match parsed URLs (plugin/saleor/urls.py)."""
        allow = _allowlist(self.allowed_saleor_urls)
        if not allow:
            return True
        if isinstance(saleor_api_url, str):
            try:
                saleor_api_url = parse_saleor_url(saleor_api_url)
            except BadSaleorUrl:
                return False
        return allow.admits(saleor_api_url)

    @property
    def saleor_bounds(self) -> Bounds:
        """Limits for calls to a Saleor: deadline, size cap, and the connect-time address filter."""
        return Bounds(
            deadline=self.http_deadline, max_bytes=self.http_max_response_bytes,
            filter_addresses=self.saleor_ip_filter, allow_loopback=self.saleor_allow_loopback,
        )  # fmt: skip

    @property
    def klarna_bounds(self) -> Bounds:
        """Klarna's URL is the operator's (region or KLARNA_BASE_URL): bounded, not filtered."""
        return Bounds(deadline=self.http_deadline, max_bytes=self.http_max_response_bytes)

    def log_warnings(self, logger: logging.Logger) -> None:
        if not self.allowed_saleor_urls:
            logger.warning("KLARNA_APP_ALLOWED_SALEOR_URLS is empty: any Saleor may install this app")
        if not self.saleor_ip_filter:
            logger.warning("KLARNA_APP_SALEOR_IP_FILTER is off: the app will call private addresses")
        elif not self.production and not self.saleor_allow_loopback:
            logger.info(
                "a Saleor on this machine (127.0.0.1, localhost) cannot install the app until "
                "KLARNA_APP_SALEOR_ALLOW_LOOPBACK=1; one on a private network needs KLARNA_APP_SALEOR_IP_FILTER=0"
            )


@functools.lru_cache(maxsize=8)
def _allowlist(entries: tuple[str, ...]) -> AllowList:
    return AllowList(entries)


def _bool(value: str, default: bool, name: str) -> bool:
    if not value:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name} must be 1 or 0, got {value!r}")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive(value: str, default: T, name: str, kind: type[T]) -> T:
    """A positive ``kind`` (int or float) from the environment, or ``default`` when unset."""
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"{PREFIX}{name} must be {noun}, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{PREFIX}{name} must be positive")
    return number


def _int(value: str, default: int, name: str) -> int:
    return _positive(value, default, name, int)


def _float(value: str, default: float, name: str) -> float:
    return _positive(value, default, name, float)


def _instance_secret(instance: Path) -> str:
    """The embedded default: generate a secret once and keep it in the instance folder."""
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = instance / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
