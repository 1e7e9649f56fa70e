"""The ``klarna-om`` command line: serve, worker, db, settings, ops, demo."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC

import click
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError

from plugin.app import Services, create_app
from plugin.db import NotMigratedError
from plugin.db.models import Installation, ProcessException
from plugin.services import queue
from plugin.services.merchant import SettingsInvalid, validate
from plugin.settings import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _services(*, require_migrated: bool = True, wait: float = 15.0) -> Services:
    """Services for a command; waits up to ``wait`` seconds for the database to answer."""
    services = Services.build(_settings())
    deadline = time.monotonic() + wait
    while True:
        try:
            if require_migrated:
                services.db.check_migrated()
            else:
                services.db.current_revision()
            return services
        except NotMigratedError as exc:
            raise click.ClickException(str(exc)) from None
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() >= deadline:
                raise click.ClickException(f"the database does not answer: {exc.__class__.__name__}") from None
            time.sleep(0.5)


def _setup_logging(level: str) -> None:
    from plugin.logs import configure

    configure(level)


@click.group()
def main() -> None:
    """Klarna Order Management for Saleor."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option(
    "--migrate/--no-migrate", default=None, help="Migrate first (default: only on the embedded SQLite database)."
)
@click.option(
    "--worker/--no-worker",
    "with_worker",
    default=None,
    help="Run a worker in-process (default: KLARNA_APP_IN_PROCESS_WORKER, on).",
)
def serve(host: str, port: int, migrate: bool | None, with_worker: bool | None) -> None:
    """Serve the app (development server) with an in-process worker."""
    from werkzeug.serving import make_server

    from plugin.worker import Worker

    settings = _settings()
    if "KLARNA_APP_PUBLIC_URL" not in os.environ:
        settings = replace(settings, public_url=f"http://{host}:{port}")
    _setup_logging(settings.log_level)
    services = Services.build(settings)
    embedded = settings.database_url.startswith("sqlite") and "DATABASE_URL" not in os.environ
    if migrate if migrate is not None else embedded:
        services.db.upgrade()
    try:
        services.db.check_migrated()
    except NotMigratedError as exc:
        raise click.ClickException(str(exc)) from None
    app = create_app(services=services)
    worker = None
    if with_worker if with_worker is not None else settings.worker_in_process:
        worker = Worker(
            services.sync_deps(), concurrency=settings.worker_concurrency, retry_base=settings.retry_base_seconds,
            retention_days=settings.retention_days,
        )  # fmt: skip
        app.extensions["klarna_om_worker"] = worker
        worker.start_thread()
    server = make_server(host, port, app, threaded=True)
    click.echo(f"Klarna OM serving on http://{host}:{port} (manifest: {settings.public_base}/api/manifest)")

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if worker is not None:
            worker.stop()


@main.command()
@click.option("--concurrency", type=int, default=None, help="Jobs run at once (default KLARNA_APP_WORKER_CONCURRENCY).")
def worker(concurrency: int | None) -> None:
    """Run a worker process: claims sync-order jobs from the shared database."""
    from plugin.worker import Worker

    services = _services()
    _setup_logging(services.settings.log_level)
    w = Worker(
        services.sync_deps(),
        concurrency=concurrency or services.settings.worker_concurrency,
        retry_base=services.settings.retry_base_seconds,
        retention_days=services.settings.retention_days,
    )
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    click.echo(f"worker {w.owner} started")
    w.run()
    click.echo(f"worker {w.owner} stopped")


@main.command()
def demo() -> None:
    """Show the product working: fake Saleor and fake Klarna on loopback, two orders end to end."""
    from plugin.demo import run

    run()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database to REVISION (default: head)."""
    services = _services(require_migrated=False)
    services.db.upgrade(revision)
    click.echo(f"database at {services.db.current_revision()}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head."""
    services = _services(require_migrated=False)
    click.echo(f"current {services.db.current_revision()} head {services.db.head_revision()}")


def _installation(session, saleor_api_url: str | None) -> Installation:  # type: ignore[no-untyped-def]
    rows = session.scalars(select(Installation)).all()
    if saleor_api_url:
        rows = [r for r in rows if r.saleor_api_url == saleor_api_url]
    if len(rows) != 1:
        urls = ", ".join(r.saleor_api_url for r in rows) or "none"
        raise click.ClickException(f"pick one installation with --saleor-api-url (installed: {urls})")
    return rows[0]


@main.group("settings")
def settings_group() -> None:
    """Merchant settings per channel (the settings page's data)."""


@settings_group.command("export")
@click.option("--saleor-api-url", default=None)
def settings_export(saleor_api_url: str | None) -> None:
    """Print the settings as JSON; passwords are left out."""
    services = _services()
    with services.db.transaction() as session:
        inst = _installation(session, saleor_api_url)
        doc = {
            "saleor_api_url": inst.saleor_api_url,
            "channels": [s.public() for s in services.store.all(session, inst.saleor_api_url)],
        }
    click.echo(json.dumps(doc, indent=2))


@settings_group.command("import")
@click.argument("file", type=click.File("r"))
@click.option("--saleor-api-url", default=None)
def settings_import(file, saleor_api_url: str | None) -> None:  # type: ignore[no-untyped-def]
    """Validate and store settings from FILE (the export format, passwords optional)."""
    try:
        doc = json.load(file)
    except ValueError as exc:
        raise click.ClickException(f"not JSON: {exc}") from None
    channels = doc.get("channels") if isinstance(doc, dict) else None
    if not isinstance(channels, list):
        raise click.ClickException('expected {"channels": [...]}')
    services = _services()
    with services.db.transaction() as session:
        inst = _installation(session, saleor_api_url or doc.get("saleor_api_url"))
        parsed = []
        for index, channel in enumerate(channels):
            existing = (
                services.store.get_exact(session, inst.saleor_api_url, channel.get("channel", "*"))
                if isinstance(channel, dict)
                else None
            )
            try:
                parsed.append(validate({k: v for k, v in channel.items() if k != "password_set"}, existing=existing))
            except SettingsInvalid as exc:
                raise click.ClickException(f"channels[{index}]: {exc}") from None
            except AttributeError:
                raise click.ClickException(f"channels[{index}]: expected an object") from None
        for merchant in parsed:
            services.store.save(session, inst.saleor_api_url, merchant)
    click.echo(f"stored settings for {len(parsed)} channel(s)")


@main.group()
def ops() -> None:
    """Operations ledger and process exceptions."""


@ops.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retried and dismissed exceptions.")
def ops_list(show_all: bool) -> None:
    """List process exceptions (open ones by default) and the jobs queue."""
    services = _services()
    with services.db.transaction() as session:
        query = select(ProcessException).order_by(ProcessException.id)
        if not show_all:
            query = query.where(ProcessException.state == "open")
        rows = session.scalars(query).all()
        for row in rows:
            click.echo(
                f"#{row.id} [{row.state}] {row.created_at.astimezone(UTC):%Y-%m-%d %H:%M} order {row.order_id} {row.error_code}: {row.message}"
            )
        counts = queue.counts(session)
    click.echo(f"{len(rows)} exception(s); jobs queued {counts['queued']}, running {counts['running']}")


@ops.command("retry")
@click.argument("exception_id", type=int)
def ops_retry(exception_id: int) -> None:
    """Retry the failed operation behind exception ID (a fresh idempotency key) and resync the order."""
    from plugin.services.exceptions import ExceptionNotOpen, retry_exception

    services = _services()
    try:
        with services.db.transaction() as session:
            message = retry_exception(session, exception_id)
    except ExceptionNotOpen as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(message)


@main.command()
@click.option("--quick", is_flag=True, help="A short run (about a minute).")
@click.option("--only", default=None, help="Parts to run: a (acknowledgement), b (end to end), c (burst), e.g. a,c.")
@click.option("--output", default=None, help="Markdown file to write (default BENCHMARKS.md in the checkout).")
@click.option("--burst", type=int, default=None, help="Webhooks in part c (default 10000; 200 with --quick).")
def bench(quick: bool, only: str | None, output: str | None, burst: int | None) -> None:
    """Benchmarks: acknowledgement, end to end, burst (needs a source checkout and PostgreSQL)."""
    from plugin.bench import run

    run(quick=quick, only=only, output=output, burst=burst)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
