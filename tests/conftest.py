"""Shared fixtures: a fresh database per test on SQLite and on a real PostgreSQL, the app, the fakes.

PostgreSQL: one database per test run (created here, dropped at the end) on
KLARNA_OM_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres). Without a server
the PostgreSQL tests skip with a reason, unless KLARNA_OM_REQUIRE_POSTGRES=1 (CI) makes that an error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import text

from plugin.app import Services, create_app
from plugin.db import Database
from plugin.db.models import Base
from plugin.settings import Settings

# No per-example deadline (a loaded machine is not a bug); CI replays the same examples every run
# (HYPOTHESIS_PROFILE=ci), so a red run is a real finding, reproducible, not a lucky draw.
hypothesis_settings.register_profile("default", deadline=None)
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLES = Path(os.environ.get("KLARNA_OM_SAMPLES") or SHARED / "reference" / "saleor-samples")
PG_SERVER = os.environ.get("KLARNA_OM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-0123456789-abcdefghijklmnop"


def require_samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(
            f"optional: recorded traffic of a real Saleor 3.23 is not at {SAMPLES} (set KLARNA_OM_SAMPLES to a "
            "folder of saleor-samples); these tests replay it against the app and its fakes; the rest of the "
            "suite does not need it"
        )
    return SAMPLES


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own for this test run, dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {PG_SERVER} ({exc.__class__.__name__}); set KLARNA_OM_TEST_POSTGRES"
        if os.environ.get("KLARNA_OM_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    name = f"klarna_om_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_SERVER.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    Database(url).upgrade()
    yield url
    with psycopg.connect(PG_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the run's PostgreSQL database truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.sqlite3'}"
        Database(url).upgrade()
        return url
    url: str = request.getfixturevalue("postgres_url")
    db = Database(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    db.dispose()
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        public_url="http://127.0.0.1:5056",
        database_url=database_url,
        secret_keys=(SECRET,),
        instance_path=tmp_path / "instance",
        retry_base_seconds=0.01,
        max_attempts=4,
        saleor_allow_loopback=True,  # the fakes listen on loopback (production refuses it: plugin/http.py)
        register_per_minute=1000,  # tests install many times; tests/fuzz/test_hardening.py tests the limit
    ).validated()


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    services = Services.build(settings)
    yield services
    services.db.dispose()


@pytest.fixture
def app(services: Services):  # type: ignore[no-untyped-def]  # a pytest fixture yielding the Flask app
    return create_app(services=services)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]  # a pytest fixture over the app fixture
    return app.test_client()
