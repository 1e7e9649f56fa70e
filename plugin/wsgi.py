"""The WSGI entry for gunicorn: ``gunicorn 'plugin.wsgi:create()'`` (see gunicorn.conf.py)."""

from __future__ import annotations

import logging

from flask import Flask
from gunicorn.errors import AppImportError
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from plugin.app import create_app
from plugin.db import NotMigratedError
from plugin.logs import configure
from plugin.settings import ConfigError, Settings
from plugin.startup import database_error, database_location, next_step, public_url_problems

logger = logging.getLogger("plugin.wsgi")


def create() -> Flask:
    """Refuses an unmigrated database: production migrates explicitly with `klarna-om db upgrade`.

    A configuration or database that cannot work is one line on stderr (gunicorn prints an
    AppImportError's message and stops), not a traceback per worker.
    """
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise AppImportError(f"klarna-om: {exc}") from None
    configure(settings.log_level)  # one format: JSON lines on stderr, like `klarna-om serve`
    try:
        app = create_app(settings)
        app.extensions["klarna_om"].db.check_migrated()
    except NotMigratedError as exc:
        raise AppImportError(f"klarna-om: {exc} (database: {database_location(settings.database_url)})") from None
    except (OperationalError, InterfaceError, ArgumentError, OSError) as exc:
        raise AppImportError(f"klarna-om: {database_error(settings.database_url, exc)}") from None
    for problem in public_url_problems(settings.public_url):
        logger.warning(
            f"public URL {settings.public_base} may not work for Saleor: {problem.reason}",
            extra={"public_url": settings.public_base, "fix": problem.fix},
        )
    logger.info(next_step(settings.public_base))
    return app
