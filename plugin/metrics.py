"""Prometheus metrics. Counters live in the process (or in PROMETHEUS_MULTIPROC_DIR under
gunicorn); queue and exception gauges are read from the database at scrape time, so any web
process reports the numbers of every worker on every host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WEBHOOKS_RECEIVED = Counter("klarna_om_webhooks_received_total", "Webhooks accepted (verified and recorded)", ["event"])
WEBHOOKS_REJECTED = Counter("klarna_om_webhooks_rejected_total", "Webhooks refused", ["reason"])
JOB_RUNS = Counter("klarna_om_job_runs_total", "Sync-order job runs by result", ["result"])
KLARNA_CALLS = Counter("klarna_om_klarna_calls_total", "Klarna OM calls", ["operation", "outcome"])
KLARNA_LATENCY = Histogram(
    "klarna_om_klarna_call_seconds", "Klarna OM call latency", ["operation"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
)  # fmt: skip


class _DatabaseCollector(Collector):
    def __init__(self, db: Any) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from plugin.db.models import ProcessException
        from plugin.services import queue

        with self.db.transaction() as session:
            counts = queue.counts(session)
            open_exceptions = session.scalar(
                select(func.count()).select_from(ProcessException).where(ProcessException.state == "open")
            )
        jobs = GaugeMetricFamily("klarna_om_jobs", "Sync-order jobs by state", labels=["state"])
        for state, value in counts.items():
            jobs.add_metric([state], value)
        yield jobs
        yield GaugeMetricFamily(
            "klarna_om_open_process_exceptions", "Open process exceptions", value=open_exceptions or 0
        )


def render(db: Any) -> tuple[bytes, str]:
    """The exposition text for /metrics."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    else:
        for collector in (WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED, JOB_RUNS, KLARNA_CALLS, KLARNA_LATENCY):
            registry.register(collector)
    registry.register(_DatabaseCollector(db))
    return generate_latest(registry), CONTENT_TYPE_LATEST
