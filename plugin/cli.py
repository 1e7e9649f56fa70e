"""The ``klarna-om`` command line: serve, worker, db, settings, ops, reconcile, demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any

import click
from sqlalchemy import select
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from plugin.app import Services, create_app
from plugin.db import NotMigratedError
from plugin.db.models import Installation, ProcessException
from plugin.services import pending, queue
from plugin.services.merchant import SettingsInvalid, validate
from plugin.settings import ConfigError, Settings
from plugin.startup import database_error, database_location, next_step, public_url_problems

logger = logging.getLogger("plugin.cli")
# What a database that cannot be reached or opened raises, whichever command is using it.
DATABASE_ERRORS = (OperationalError, InterfaceError)
_DATABASE_URL = "klarna_om.database_url"  # click context meta: the URL the command opened


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _build(settings: Settings) -> Services:
    """Services for ``settings``; notes the database URL so that any database error names it."""
    click.get_current_context().meta[_DATABASE_URL] = settings.database_url
    try:
        return Services.build(settings)
    except (ArgumentError, OSError) as exc:  # a URL SQLAlchemy cannot use; a SQLite folder that cannot be made
        raise click.ClickException(database_error(settings.database_url, exc)) from None


def _services(*, require_migrated: bool = True, wait: float = 0.0) -> Services:
    """Services for a command; waits up to ``wait`` seconds for the database to answer."""
    services = _build(_settings())
    if _embedded(services.settings):
        services.db.upgrade()  # the embedded default needs no `db upgrade`, whichever command runs first
    deadline = time.monotonic() + wait
    while True:
        try:
            if require_migrated:
                services.db.check_migrated()
            else:
                services.db.current_revision()
            return services
        except NotMigratedError as exc:
            raise click.ClickException(f"{exc} (database: {database_location(services.db.url)})") from None
        except (OperationalError, InterfaceError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _embedded(settings: Settings) -> bool:
    """The SQLite file in the instance folder, which nothing but this app uses."""
    return settings.database_url.startswith("sqlite") and "DATABASE_URL" not in os.environ


class _Main(click.Group):
    """The command group: a database that cannot be used is one line (what, where, the fix), not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DATABASE_ERRORS as exc:
            url = ctx.meta.get(_DATABASE_URL)
            if url is None:  # not a database error: the command never opened one
                raise
            raise click.ClickException(database_error(url, exc)) from None


def _version() -> str:
    try:
        return version("klarna-om-saleor")
    except PackageNotFoundError:  # pragma: no cover - a source tree without an install
        return "unknown"


def _setup_logging(level: str) -> None:
    from plugin.logs import configure

    configure(level)


def announce(settings: Settings, listening: str) -> None:
    """The start-up lines, in the log format: where it serves, what cannot work for Saleor, the next step."""
    manifest = f"{settings.public_base}/api/manifest"
    logger.info(
        "serving",
        extra={"listening": listening, "manifest_url": manifest, "database": database_location(settings.database_url)},
    )
    for problem in public_url_problems(settings.public_url):
        logger.warning(
            f"public URL {settings.public_base} may not work for Saleor: {problem.reason}",
            extra={"public_url": settings.public_base, "fix": problem.fix},
        )
    if settings.klarna_base_url:
        logger.warning(
            "KLARNA_BASE_URL is set: every Klarna call goes there, whatever a channel's region",
            extra={"klarna_base_url": settings.klarna_base_url},
        )
    logger.info(next_step(settings.public_base), extra={"manifest_url": manifest})


@click.group(cls=_Main)
@click.version_option(_version(), "--version", "-V", prog_name="klarna-om", message="%(prog)s %(version)s")
def main() -> None:
    """Klarna Order Management for Saleor: captures, cancels and refunds Klarna payments as Saleor orders change.

    Start with `klarna-om serve`, then install the app from the Saleor dashboard (see the README).
    """


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 for every interface (a Saleor in Docker or on another machine).",
)
@click.option("--port", default=5000, show_default=True, type=int, help="TCP port to listen on.")
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
    services = _build(settings)
    if migrate if migrate is not None else _embedded(settings):
        services.db.upgrade()
    try:
        services.db.check_migrated()
    except NotMigratedError as exc:
        raise click.ClickException(f"{exc} (database: {database_location(settings.database_url)})") from None
    app = create_app(services=services)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; fix: choose another --port or stop what uses it"
        ) from None
    worker = None
    if with_worker if with_worker is not None else settings.worker_in_process:
        worker = Worker(
            services.sync_deps(), concurrency=settings.worker_concurrency, retry_base=settings.retry_base_seconds,
            retention_days=settings.retention_days, prune=services.prune,
        )  # fmt: skip
        app.extensions["klarna_om_worker"] = worker
        worker.start_thread()
    announce(settings, f"http://{host}:{port}")

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
@click.option(
    "--wait-for-database",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds to wait for the database to answer at start (a database starting beside the worker).",
)
def worker(concurrency: int | None, wait_for_database: float) -> None:
    """Run a worker process: claims sync-order jobs from the shared database."""
    from plugin.worker import Worker

    services = _services(wait=wait_for_database)
    _setup_logging(services.settings.log_level)
    w = Worker(
        services.sync_deps(),
        concurrency=concurrency or services.settings.worker_concurrency,
        retry_base=services.settings.retry_base_seconds,
        retention_days=services.settings.retention_days,
        prune=services.prune,
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
    """Migrate the database to REVISION (default: head, the newest)."""
    services = _services(require_migrated=False)
    services.db.upgrade(revision)
    click.echo(f"database at {services.db.current_revision()} ({database_location(services.db.url)})")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head."""
    services = _services(require_migrated=False)
    where = database_location(services.db.url)
    click.echo(f"database {where}: current {services.db.current_revision()} head {services.db.head_revision()}")


SALEOR_URL_HELP = (
    "The Saleor API URL (https://shop.example.com/graphql/); needed when several Saleors installed the app."
)


def _installation(session: Session, saleor_api_url: str | None) -> Installation:
    rows = session.scalars(select(Installation)).all()
    installed = ", ".join(r.saleor_api_url for r in rows) or "none"
    if saleor_api_url:
        key = pending.same_saleor(saleor_api_url)
        match = [r for r in rows if pending.same_saleor(r.saleor_api_url) == key]
        if not match:
            raise click.ClickException(
                f"this Saleor has not installed the app yet: {saleor_api_url} (installed: {installed})"
            )
        return match[0]
    if len(rows) != 1:
        hint = "no Saleor has installed the app yet" if not rows else f"installed: {installed}"
        raise click.ClickException(f"pick one installation with --saleor-api-url ({hint})")
    return rows[0]


@main.group("settings")
def settings_group() -> None:
    """Merchant settings per channel (the settings page's data)."""


@settings_group.command("export")
@click.option("--saleor-api-url", default=None, help=SALEOR_URL_HELP)
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
@click.option(
    "--saleor-api-url",
    default=None,
    help=SALEOR_URL_HELP + " Default: the file's saleor_api_url. A Saleor that has not installed the app "
    "yet gets the settings when it installs it.",
)
def settings_import(file: IO[str], saleor_api_url: str | None) -> None:
    """Validate and store settings from FILE (the export format, passwords optional)."""
    try:
        doc = json.load(file)
    except ValueError as exc:
        raise click.ClickException(f"not JSON: {exc}") from None
    channels = doc.get("channels") if isinstance(doc, dict) else None
    if not isinstance(channels, list):
        raise click.ClickException('expected {"channels": [...]}')
    target = saleor_api_url or (doc.get("saleor_api_url") if isinstance(doc.get("saleor_api_url"), str) else None)
    services = _services()
    with services.db.transaction() as session:
        installed = session.scalars(select(Installation.saleor_api_url)).all()
        if target and not any(pending.same_saleor(url) == pending.same_saleor(target) for url in installed):
            for index, channel in enumerate(channels):
                _parsed_channel(index, channel, None)
            documents = [{k: v for k, v in channel.items() if k != "password_set"} for channel in channels]
            pending.stage(session, services.box, target, documents)
            click.echo(
                f"this Saleor has not installed the app yet ({target}): kept settings for {len(documents)} "
                "channel(s); they apply when it installs the app"
            )
            return
        inst = _installation(session, target)
        parsed = []
        for index, channel in enumerate(channels):
            existing = (
                services.store.get_exact(session, inst.saleor_api_url, channel.get("channel", "*"))
                if isinstance(channel, dict)
                else None
            )
            parsed.append(_parsed_channel(index, channel, existing))
        for merchant in parsed:
            services.store.save(session, inst.saleor_api_url, merchant)
    click.echo(f"stored settings for {len(parsed)} channel(s) of {inst.saleor_api_url}")


def _parsed_channel(index: int, channel: Any, existing: Any) -> Any:
    if not isinstance(channel, dict):
        raise click.ClickException(f"channels[{index}]: expected an object")
    try:
        return validate({k: v for k, v in channel.items() if k != "password_set"}, existing=existing)
    except SettingsInvalid as exc:
        raise click.ClickException(f"channels[{index}]: {exc}") from None


@main.group()
def ops() -> None:
    """Operations ledger and process exceptions."""


@ops.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include retried and dismissed exceptions.")
def ops_list(show_all: bool) -> None:
    """List process exceptions (open ones by default) and the jobs queue."""
    services = _services()
    click.echo(f"database {database_location(services.db.url)}")
    with services.db.transaction() as session:
        query = select(ProcessException).order_by(ProcessException.id)
        if not show_all:
            query = query.where(ProcessException.state == "open")
        rows = session.scalars(query).all()
        for row in rows:
            click.echo(
                f"#{row.id} [{row.state}] {row.created_at:%Y-%m-%d %H:%M} order {row.order_id} {row.error_code}: {row.message}"
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
@click.option("--run", "run_here", is_flag=True, help="Run the checks in this process too (else the workers do).")
def reconcile(run_here: bool) -> None:
    """Check every open Klarna order now: drift, expiry and fraud decisions (what the schedule does daily)."""
    services = _services()
    with services.db.transaction() as session:
        orders = queue.scheduled_checks(session)
    with click.progressbar(orders, label="Queueing checks", show_pos=True) as bar:
        for saleor_api_url, order_id in bar:
            with services.db.transaction() as session:
                queue.check_now(session, saleor_api_url, order_id)
    click.echo(f"{len(orders)} open order(s) queued for a check now")
    if run_here and orders:
        from plugin.worker import Worker

        worker = Worker(services.sync_deps(), concurrency=services.settings.worker_concurrency)
        with click.progressbar(length=len(orders), label="Checking", show_pos=True) as bar:
            while jobs := worker.claim(worker.concurrency):
                for job in jobs:
                    worker.process(job)
                    bar.update(1)
        click.echo("done; see `klarna-om ops list` for what needs a look")


@main.command()
@click.option("--quick", is_flag=True, help="A short run (about a minute); prints the table, writes no file.")
@click.option(
    "--only", default=None, help="Parts: a (acknowledgement), b (end to end), c (burst), d (client CPU), e.g. a,c."
)
@click.option(
    "--output",
    default=None,
    help="Markdown file to write (default: BENCHMARKS.md of the checkout, or ./BENCHMARKS.md).",
)
@click.option("--burst", type=int, default=None, help="Webhooks in part c (default 10000; 200 with --quick).")
@click.option("--profile", is_flag=True, help="Sample where the worker processes' CPU goes in part b (adds overhead).")
def bench(quick: bool, only: str | None, output: str | None, burst: int | None, profile: bool) -> None:
    """Benchmarks: acknowledgement, end to end, burst, client CPU per call (needs PostgreSQL)."""
    from plugin.benchmarks.cli import run

    run(quick=quick, only=only, output=output, burst=burst, profile=profile)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
