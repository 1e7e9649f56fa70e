"""The pages Saleor's dashboard shows in an iframe: settings, order widget, operations log."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard_ext", __name__)
