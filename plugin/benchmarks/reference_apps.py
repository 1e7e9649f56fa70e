"""The two reference WSGI apps the acknowledgement benchmark compares the app with.

Both serve the app's webhook path under the same gunicorn configuration (gunicorn.conf.py with the
app spec on the command line), so the comparison isolates what the app does per request:

* ``bare()``: Flask answering 200 with a small JSON body; the floor of the web stack.
* ``durable()``: the least a correct durable receiver must do: verify Saleor's detached JWS with
  ``plugin.saleor.jws.verify_detached`` against a JWKS, then one INSERT through a pooled SQLAlchemy
  engine (``plugin.db.make_engine``, the app's own pooling and SQLite pragmas) and answer 200.

Environment: ``BENCH_DATABASE_URL`` (durable), ``BENCH_JWKS_FILE`` (durable: the JWKS JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func

from plugin.db import make_engine
from plugin.saleor import jws

WEBHOOK_PATH = "/api/webhooks/order-events"

metadata = MetaData()
received = Table(
    "bench_received",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saleor_api_url", String(512), nullable=False),
    Column("event", String(64), nullable=False),
    Column("order_id", String(255), nullable=False),
    Column("received_at", DateTime(timezone=True), server_default=func.now()),
)


def create_schema(database_url: str) -> None:
    """Create the durable app's table (before gunicorn starts: workers must not race on DDL)."""
    engine = make_engine(database_url)
    metadata.create_all(engine)
    engine.dispose()


def _healthz(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(ok=True)


def bare() -> Flask:
    app = Flask("bench_bare")
    _healthz(app)

    @app.post(WEBHOOK_PATH)
    def webhook() -> ResponseReturnValue:
        return jsonify(ok=True)

    return app


def durable() -> Flask:
    app = Flask("bench_durable")
    _healthz(app)
    engine = make_engine(os.environ["BENCH_DATABASE_URL"])
    jwks_text = Path(os.environ["BENCH_JWKS_FILE"]).read_text()
    insert = received.insert()

    @app.post(WEBHOOK_PATH)
    def webhook() -> ResponseReturnValue:
        raw = request.get_data()
        try:
            jws.verify_detached(request.headers.get("Saleor-Signature", ""), raw, jwks_text)
        except jws.SignatureError:
            return jsonify(error="bad signature"), 401
        try:
            order_id = json.loads(raw)["order"]["id"]
        except (ValueError, KeyError, TypeError):
            return jsonify(error="malformed"), 400
        with engine.begin() as conn:
            conn.execute(insert, {
                "saleor_api_url": request.headers.get("Saleor-Api-Url", ""),
                "event": request.headers.get("Saleor-Event", ""), "order_id": order_id,
            })  # fmt: skip
        return jsonify(ok=True)

    return app
