"""The composition root: ``create_app`` wires settings, database, adapters and blueprints."""

from __future__ import annotations

import functools
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from plugin import http
from plugin.crypto import SecretBox
from plugin.db import Database, NotMigratedError
from plugin.db.repository import SqlLedger
from plugin.klarna.client import KlarnaOrdersClient, base_url
from plugin.klarna.port import KlarnaOrders
from plugin.klarna.ratelimit import SharedRateLimiter, bucket_key
from plugin.metrics import render as render_metrics
from plugin.saleor import client as saleor_client
from plugin.saleor.port import SaleorOrders
from plugin.services import housekeeping
from plugin.services.installations import JwksVerifier
from plugin.services.merchant import MerchantSettings, SettingsStore
from plugin.services.sync import SyncDeps
from plugin.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the blueprints and the worker use; tests replace single fields."""

    settings: Settings
    db: Database
    box: SecretBox
    store: SettingsStore
    fetch_jwks: Callable[[str], str] = saleor_client.fetch_jwks
    fetch_app_id: Callable[[str, str], str] = saleor_client.fetch_app_id
    saleor_for: Callable[[str, str], Any] | None = None
    klarna_for: Callable[[MerchantSettings], Any] | None = None
    jwks_verifier: JwksVerifier | None = None  # shared by webhooks and the dashboard API
    register_limiter: http.SlidingWindow | None = None
    _clients: dict[Any, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        box = SecretBox(settings.secret_keys)
        services = cls(
            settings=settings,
            db=Database(settings.database_url, settings.db_pool_size),
            box=box,
            store=SettingsStore(box),
        )
        # Calls to a Saleor go through one bounded, address-filtered session (plugin/http.py).
        saleor_session = http.bounded_session(settings.saleor_bounds)
        services.fetch_jwks = _explained(
            "Saleor's JWKS could not be fetched", functools.partial(saleor_client.fetch_jwks, session=saleor_session)
        )
        services.fetch_app_id = _explained(
            "the app id could not be read from Saleor",
            functools.partial(saleor_client.fetch_app_id, session=saleor_session),
        )
        services.register_limiter = http.SlidingWindow(settings.register_per_minute)
        services.saleor_for = services._saleor_client
        services.klarna_for = services._klarna_client
        services.jwks_verifier = JwksVerifier(services.db, lambda url: services.fetch_jwks(url))
        return services

    def _saleor_client(self, saleor_api_url: str, token: str) -> Any:
        key = ("saleor", threading.get_ident(), saleor_api_url, token)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = saleor_client.SaleorClient(
                    saleor_api_url, token, bounds=self.settings.saleor_bounds
                )
            return self._clients[key]

    def _klarna_client(self, merchant: MerchantSettings) -> KlarnaOrdersClient:
        url = base_url(merchant.region, merchant.environment, self.settings.klarna_base_url)
        key = ("klarna", url, merchant.username, merchant.password)
        with self._lock:
            if key not in self._clients:
                # One client (pool, rate limiter) per merchant credentials: Klarna limits per merchant,
                # so the limiter's bucket lives in the database, shared by every worker process.
                limiter = SharedRateLimiter(
                    self.db.engine,
                    bucket_key(url, merchant.username),
                    self.settings.klarna_rate_per_second,
                    max(1, int(self.settings.klarna_rate_per_second)),
                )
                self._clients[key] = KlarnaOrdersClient(
                    url, merchant.username, merchant.password or "", rate_limiter=limiter,
                    timeout=(3.05, self.settings.http_timeout),
                    session=http.bounded_session(self.settings.klarna_bounds, pool_connections=4, pool_maxsize=64),
                )  # fmt: skip
            client: KlarnaOrdersClient = self._clients[key]
            return client

    def prune(self, retention: timedelta) -> housekeeping.Pruned:
        """Delete deliveries and idle jobs older than ``retention`` (the workers' housekeeping)."""
        return housekeeping.prune(self.db, retention)

    def sync_deps(self) -> SyncDeps:
        """The worker's use case wired to the adapters: the SQL ledger and ports over the clients."""
        assert self.saleor_for is not None and self.klarna_for is not None
        saleor_for, klarna_for = self.saleor_for, self.klarna_for
        return SyncDeps(
            repo=SqlLedger(self.db, self.store, self.box),
            saleor_for=lambda url, token: SaleorOrders(saleor_for(url, token)),
            klarna_for=lambda merchant: KlarnaOrders(klarna_for(merchant)),
            lease_seconds=self.settings.job_lease_seconds, max_attempts=self.settings.max_attempts,
            retry_base=self.settings.retry_base_seconds,
        )  # fmt: skip


def _explained(what: str, call: Callable[..., str]) -> Callable[..., str]:
    """``call`` (a register step against Saleor), logging why it failed: the answer to Saleor only has a code."""

    def explained(saleor_api_url: str, *args: Any) -> str:
        try:
            return call(saleor_api_url, *args)
        except Exception as exc:
            logger.warning(what, extra={"saleor_api_url": saleor_api_url, "reason": _reason(exc)})
            raise

    return explained


def _reason(exc: BaseException) -> str:
    """An exception as a short reason: its class and first line (URLs, never tokens)."""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def _refusal(response: Response) -> dict[str, Any]:
    """What a 4xx/5xx JSON answer said: the code and message of every error shape the app answers with."""
    body = response.get_json(silent=True) if response.is_json else None
    if not isinstance(body, dict):
        return {}
    error = body.get("error")
    if isinstance(error, dict):
        return {"code": error.get("code") or error.get("type"), "reason": error.get("message")}
    if isinstance(body.get("errors"), dict):  # field validation: the field names and messages
        return {"code": "INVALID", "reason": "; ".join(f"{k}: {v}" for k, v in body["errors"].items())[:500]}
    return {}


def log_requests(app: Flask) -> None:
    """One log line per request: method, path (no query string), status, duration; refusals with their reason."""

    @app.before_request
    def _start_clock() -> None:
        g.klarna_om_started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        started = g.get("klarna_om_started")
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path[:200],
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1) if started else None,
        }
        level = logging.INFO
        if response.status_code >= 400:
            fields.update(_refusal(response))
            level = logging.ERROR if response.status_code >= 500 else logging.WARNING
        if logger.isEnabledFor(level):
            logger.log(level, "request refused" if response.status_code >= 400 else "request", extra=fields)
        return response


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Flask:
    """Build the Flask app. ``settings`` default to the environment; ``services`` to real adapters."""
    if services is None:
        settings = settings or Settings.from_env()
        services = Services.build(settings)
    settings = services.settings
    logging.getLogger("plugin").setLevel(settings.log_level)
    settings.log_warnings(logger)

    app = Flask(__name__, instance_path=str(settings.instance_path.resolve()))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # "//" in a path is not an address to redirect to (a 308 before authentication): it is a 404.
    app.url_map.merge_slashes = False
    app.config["SETTINGS"] = settings
    app.extensions["klarna_om"] = services

    from dashboard_ext import bp as dashboard_bp
    from webhooks import bp as webhooks_bp

    app.register_blueprint(webhooks_bp)
    app.register_blueprint(dashboard_bp)
    log_requests(app)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").upper().replace(" ", "_")
        response = jsonify(error={"type": code, "message": exc.description})
        if exc.code is not None:  # as Flask treats a (body, None) pair: the body's own status
            response.status_code = exc.code
        return response

    # Only a database that cannot be reached is "retry later"; any other database error is a bug
    # (inputs are validated at the edges) and stays a 500.
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(exc: Exception) -> tuple[Response, int]:
        logger.error("database unavailable", extra={"error": exc.__class__.__name__})
        response = jsonify(
            error={"type": "DATABASE_UNAVAILABLE", "message": "The database is unavailable; retry later."}
        )
        response.headers["Retry-After"] = "10"
        return response, 503

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        """The process is up."""
        return jsonify(ok=True)

    @app.get("/readyz")
    def readyz() -> ResponseReturnValue:
        """The database answers and its schema is at the code's migration head."""
        try:
            services.db.check_migrated()
        except NotMigratedError as exc:
            return jsonify(ready=False, reason=str(exc)), 503
        return jsonify(ready=True)

    @app.get("/metrics")
    def metrics() -> ResponseReturnValue:
        # With KLARNA_APP_METRICS_TOKEN set, only for ``Authorization: Bearer <token>``.
        expected = settings.metrics_token
        if expected:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return jsonify(error={"type": "UNAUTHORIZED", "message": "metrics need the metrics token"}), 401
        body, content_type = render_metrics(services.db)
        return app.response_class(body, content_type=content_type)

    return app


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["klarna_om"]
    return services
