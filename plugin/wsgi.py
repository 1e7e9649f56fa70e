"""The WSGI entry for gunicorn: ``gunicorn 'plugin.wsgi:create()'`` (see gunicorn.conf.py)."""

from __future__ import annotations

from flask import Flask

from plugin.app import create_app
from plugin.settings import Settings


def create() -> Flask:
    """Refuses an unmigrated database: production migrates explicitly with `klarna-om db upgrade`."""
    settings = Settings.from_env()
    app = create_app(settings)
    app.extensions["klarna_om"].db.check_migrated()
    return app
