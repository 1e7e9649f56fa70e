"""`klarna-om bench` at a tiny size: the machinery runs end to end and produces numbers and a table.

Only that numbers and a table come out is asserted, never a duration or a rate: those depend on
the machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from tests.conftest import PG_SERVER

pytestmark = pytest.mark.postgres


@pytest.fixture
def postgres_admin() -> str:
    import psycopg

    try:
        psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL not reachable at {PG_SERVER} ({exc.__class__.__name__}); set KLARNA_OM_TEST_POSTGRES"
        if os.environ.get("KLARNA_OM_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return PG_SERVER


def test_bench_runs_at_a_tiny_size(postgres_admin: str, tmp_path: Path) -> None:
    from plugin.benchmarks.cli import parse_parts, run

    output = tmp_path / "BENCHMARKS.md"
    lines: list[str] = []
    results = run(
        output=str(output), burst=20, echo=lines.append, postgres_admin=postgres_admin,
        ack_warmup=5, ack_requests=20, ack_servers=("app-postgres", "durable-sqlite", "bare"),
        e2e_orders=20, e2e_latencies=(0.0,), e2e_workers=(1,), burst_workers=1, burst_wait=120.0, client_calls=30,
    )  # fmt: skip

    # (a) one row per server, every webhook acknowledged, with rates, latencies and CPU
    assert [row.server for row in results.ack] == ["the app", "minimal durable (reference)", "bare Flask (reference)"]
    for row in results.ack:
        assert row.ok == row.sent == 20
        assert all(math.isfinite(v) and v > 0 for v in (row.rate, row.p50, row.p99)), row
        assert math.isfinite(row.cpu_ms) and row.cpu_ms >= 0
    # (b) every order captured and noted, once
    (e2e,) = results.e2e
    assert (e2e.workers, e2e.orders, e2e.done, e2e.captured) == (1, 20, 20, 20)
    assert math.isfinite(e2e.rate) and e2e.rate > 0 and math.isfinite(e2e.worker_cpu_ms)
    # (c) the burst: every webhook acknowledged and captured; peak memory of web and worker processes
    burst = results.burst
    assert burst is not None and burst.ok == burst.captured == 20 and not burst.timed_out
    roles = {role for role, _, _ in burst.peaks}
    assert {"web master", "web worker", "worker"} <= roles
    assert all(kb > 0 for _, _, kb in burst.peaks)
    # (d) CPU per call of each client, the bare references first
    names = [row.name for row in results.client_rows]
    assert names[:3] == ["bare http.client, GET", "bare requests.Session, GET", "app Klarna client, get_order"]
    assert "app Saleor client, add_note" in names
    assert all(math.isfinite(row.cpu_us) and row.cpu_us > 0 for row in results.client_rows)
    # the table was printed and written, with the targets next to the measurements
    text = output.read_text()
    for heading in (
        "(a) Acknowledgement",
        "(b) End to end",
        "(c) Burst",
        "(d) Client CPU",
        "minimal durable",
        "p99 <= 30 ms",
    ):
        assert heading in text
    assert "| the app | PostgreSQL |" in "\n".join(lines)
    assert parse_parts("a,c") == ("a", "c")
    assert parse_parts(None) == ("a", "b", "c", "d")


def test_bench_profile_says_where_the_worker_cpu_goes(postgres_admin: str) -> None:
    from plugin.benchmarks.cli import run

    lines: list[str] = []
    results = run(
        quick=True, only="b", echo=lines.append, postgres_admin=postgres_admin, profile=True,
        e2e_orders=10, e2e_latencies=(0.0,), e2e_workers=(1,),
    )  # fmt: skip
    (e2e,) = results.e2e
    assert e2e.done == 10 and e2e.profile is not None and e2e.profile["seconds"] > 0
    app_functions = [name for name, _ in e2e.profile["inclusive"] if name.startswith("plugin/")]
    assert "plugin/worker.py:process" in app_functions
    table = "\n".join(lines)
    assert "Where the worker processes' CPU went" in table and "| `plugin/worker.py:process` |" in table
