"""/healthz, /readyz, /metrics and the structured logs."""

from __future__ import annotations

import json
import logging

from plugin.db import Database
from plugin.logs import JsonFormatter
from tests.functional.shop import Shop


def test_health_and_readiness(shop: Shop) -> None:
    client = shop.app.test_client()
    assert client.get("/healthz").get_json() == {"ok": True}
    assert client.get("/readyz").get_json() == {"ready": True}
    shop.services.db = Database("postgresql://postgres@127.0.0.1:1/none")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_metrics_count_webhooks_klarna_calls_jobs_and_exceptions(shop: Shop) -> None:
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    text = shop.app.test_client().get("/metrics").get_data(as_text=True)
    assert 'klarna_om_webhooks_received_total{event="FULFILLMENT_CREATED"}' in text
    assert 'klarna_om_klarna_calls_total{operation="capture",outcome="ok"}' in text
    assert 'klarna_om_klarna_call_seconds_bucket{le="0.025",operation="capture"}' in text
    assert 'klarna_om_jobs{state="idle"} 1.0' in text
    assert "klarna_om_open_process_exceptions 0.0" in text


def test_json_logs_carry_context_and_redact_secret_fields() -> None:
    record = logging.LogRecord("plugin.x", logging.INFO, __file__, 1, "Klarna call finished", (), None)
    record.order_id, record.klarna_order_id, record.correlation_id = "T3Jk", "k-1", "c-1"
    record.auth_token = "Es1O0oB2O3PTeG9A4IVYUcaMoru3Ls"
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["order_id"], entry["klarna_order_id"], entry["correlation_id"]) == ("T3Jk", "k-1", "c-1")
    assert entry["auth_token"] == "[REDACTED]" and entry["message"] == "Klarna call finished"
