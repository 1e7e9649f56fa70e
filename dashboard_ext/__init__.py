"""The pages Saleor's dashboard shows in an iframe: settings, order widget, operations log.

``pages`` serves the HTML (Jinja, plain CSS and JavaScript, no bundler); ``api`` the JSON they
fetch with the dashboard's token (``auth``). The read models live in ``plugin.services.dashboard``.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint(
    "dashboard_ext", __name__, template_folder="templates", static_folder="static", static_url_path="/dashboard-static"
)

from dashboard_ext import api, pages  # noqa: E402,F401  (register the views on bp)
