"""``klarna-om bench``: acknowledgement, end-to-end throughput and a burst, measured side by side.

Everything runs on this machine: gunicorn (gunicorn.conf.py, the same configuration for the app and
the two reference apps), real ``klarna-om worker`` processes, PostgreSQL (a fresh database created
and dropped here) or SQLite, the fake Saleor and fake Klarna of ``plugin/testing`` on loopback inside
this process, and the load generator (``plugin/benchmarks/loadgen.py``) in a process of its own.

Parts: (a) acknowledgement, (b) end to end, (c) burst, (d) client CPU per call. See BENCHMARKS.md for the method.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import pickle
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text

from plugin.app import Services
from plugin.benchmarks import clients, procfs, sampler
from plugin.benchmarks.reference_apps import WEBHOOK_PATH, create_schema
from plugin.db import Database
from plugin.db.models import Delivery, Job, Note, Operation, ProcessException
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.catalog import SHOE, TEE

# The folder that holds the ``plugin`` package: a source checkout, or site-packages of an install.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
GUNICORN_CONFIG = "python:plugin.gunicorn_conf"
SECRET = "bench-secret-key-not-for-production-0123456789abcdef"
POSTGRES_ADMIN = os.environ.get("KLARNA_OM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
NOTES_MARKER = "<!-- Notes below this line are kept when the bench rewrites this file. -->"
ORDER_MINOR = 13000  # 2 x 20.00 + 90.00 USD

# Targets (printed next to the measurements, never asserted).
TARGET_ACK_VS_DURABLE = 0.9
TARGET_P99_MS = 30.0
TARGET_CPU_MS_PER_ORDER = 3.0
TARGET_ORDERS_PER_S_AT_300MS = 100.0
TARGET_SCALING_2V1 = 1.8
TARGET_PEAK_MB = 300.0


@dataclass
class Config:
    quick: bool = False
    parts: tuple[str, ...] = ("a", "b", "c")
    senders: int = 16
    loadgen_processes: int = 2
    web_concurrency: int = 2
    ack_warmup: int = 300
    ack_requests: int = 3000
    # Run order; the first app server is the one Saleor installs the app on.
    ack_servers: tuple[str, ...] = ("app-sqlite", "durable-sqlite", "bare", "durable-postgres", "app-postgres")
    e2e_orders: int = 300
    e2e_latencies: tuple[float, ...] = (0.0, 0.3)
    e2e_workers: tuple[int, ...] = (1, 2, 4)
    worker_concurrency: int = 128  # a job waits ~0.65 s on a 300 ms Klarna: 100 orders/s needs > 65 in flight
    # PostgreSQL connections the worker processes may hold together (the server allows 100 by default
    # and is shared): each process's pool holds up to one connection per running job, at most
    # pool_size + max_overflow. Per-worker concurrency is lowered when the pools could exceed this.
    worker_connections: int = 48
    klarna_rate: int = 100_000  # KLARNA_APP_KLARNA_RATE_PER_SECOND for the bench (default 25)
    burst: int = 10_000
    burst_workers: int = 2
    burst_latency: float = 0.0
    burst_wait: float = 240.0  # seconds to wait for every capture before projecting the rest
    client_calls: int = 2000  # (d) calls through each client
    postgres_admin: str = POSTGRES_ADMIN
    output: Path | None = None
    keep_workdir: bool = False
    profile: bool = False  # sample where the worker processes' CPU goes in (b)

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        parts: Sequence[str] = ("a", "b", "c"),
        burst: int | None = None,
        output: Path | None = None,
        **overrides: Any,
    ) -> Config:
        cfg = cls(quick=quick, parts=tuple(parts), output=output)
        if quick:  # about a minute: fewer requests, orders and runs
            cfg.ack_warmup, cfg.ack_requests = 60, 300
            cfg.e2e_orders = 100  # enough for the 300 ms run to show its rate, not just one wave of jobs
            cfg.client_calls = 300
            cfg.e2e_workers = (1, 2)
            cfg.burst = 200
            cfg.burst_wait = 20.0
        if burst is not None:
            cfg.burst = burst
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cfg


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _fakes() -> tuple[Any, Any, Any]:
    import plugin.testing.saleor as fake_saleor_module
    from plugin.testing.klarna import FakeKlarnaServer

    return fake_saleor_module, fake_saleor_module.FakeSaleor, FakeKlarnaServer


class _MemoGraphQL:
    """graphql-core with ``parse`` and ``validate`` memoized, for the fake Saleor in this process.

    The fake parses and validates every GraphQL request against the whole Saleor schema (about
    20 ms of CPU per order query); a real Saleor runs on hosts of its own. Memoizing keeps the
    fake's share of the two cores small; execution is not memoized.
    """

    def __init__(self, module: Any) -> None:
        self._module = module
        self._validated: dict[tuple[int, int, tuple[Any, ...] | None], tuple[Any, list[Any]]] = {}
        self._lock = threading.Lock()
        self.parse = functools.lru_cache(maxsize=512)(module.parse)

    def validate(self, schema: Any, document: Any, rules: Any = None, *args: Any, **kwargs: Any) -> list[Any]:
        key = (id(schema), id(document), tuple(rules) if rules is not None else None)
        with self._lock:
            hit = self._validated.get(key)
        if hit is not None and hit[0] is document and not args and not kwargs:
            return hit[1]
        errors: list[Any] = self._module.validate(schema, document, rules, *args, **kwargs)
        with self._lock:
            self._validated[key] = (document, errors)  # keeps the document alive: its id stays unique
        return errors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path
    profile: Path | None = None  # where the CPU sampler writes (--profile)

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass(frozen=True)
class Sizing:
    concurrency: int  # KLARNA_APP_WORKER_CONCURRENCY
    connections: int  # the most database connections one worker process may hold
    pool_size: int | None  # KLARNA_APP_DB_POOL_SIZE when the bench sets it

    def __str__(self) -> str:
        return f"{self.concurrency} jobs, <= {self.connections} db conns"


@dataclass
class LoadResult:
    records: list[tuple[int, float, float, int]]
    errors: list[str]
    cpu: float

    @property
    def ok(self) -> list[tuple[int, float, float, int]]:
        return [r for r in self.records if r[3] == 200]

    @property
    def failed(self) -> int:
        return len(self.records) - len(self.ok)

    @property
    def span(self) -> float:
        if not self.records:
            return float("nan")
        return max(r[2] for r in self.records) - min(r[1] for r in self.records)

    def latencies_ms(self) -> list[float]:
        return [(end - start) * 1000 for _, start, end, status in self.records if status == 200]


@dataclass
class CpuSnapshot:
    at: float
    values: dict[str, float]
    machine: procfs.MachineCpu


# ------------------------------------------------------------------------------------------ results


@dataclass
class AckRow:
    server: str
    database: str
    sent: int
    ok: int
    rate: float
    p50: float
    p99: float
    cpu_ms: float
    loadgen_cpu_ms: float
    others_cores: float


@dataclass
class E2ERow:
    latency: float
    workers: int
    sizing: Sizing
    orders: int
    done: int
    captured: int
    seconds: float
    rate: float
    worker_cpu_ms: float
    web_cpu_ms: float
    bench_cpu_ms: float
    postgres_cpu_ms: float
    others_cores: float
    busy_cores: float
    latency_p50: float
    latency_p99: float
    timed_out: bool
    profile: dict[str, Any] | None = None  # the workers' CPU by function (--profile)


@dataclass
class BurstResult:
    webhooks: int
    workers: int
    sizing: Sizing
    latency: float
    ok: int
    ack_seconds: float
    ack_rate: float
    captured: int
    captured_seconds: float
    timed_out: bool
    projected_seconds: float
    busy_cores: float
    others_cores: float
    peaks: list[tuple[str, int, int]]  # (role, pid, VmHWM kB)
    worker_cpu_ms: float  # per captured order
    web_cpu_ms: float  # per acknowledged webhook


@dataclass
class Results:
    config: Config
    started: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    ack: list[AckRow] = field(default_factory=list)
    e2e: list[E2ERow] = field(default_factory=list)
    burst: BurstResult | None = None
    client_rows: list[clients.ClientRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, cfg: Config, echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.workdir = Path(tempfile.mkdtemp(prefix="klarna-om-bench-"))
        fake_module, fake_saleor_cls, fake_klarna_cls = _fakes()
        if not isinstance(fake_module.graphql, _MemoGraphQL):
            fake_module.graphql = _MemoGraphQL(fake_module.graphql)
        self._fake_module = fake_module
        self._staff = fake_module.STAFF_USER
        self._gid = fake_module.gid
        self.klarna_server = fake_klarna_cls().start()
        self.klarna = self.klarna_server.fake
        self.saleor = fake_saleor_cls().start()
        self.procs: list[Proc] = []
        self.pg_url: str | None = None
        self.pg_name: str | None = None
        self.sqlite_url = f"sqlite:///{self.workdir / 'app.sqlite3'}"
        self.registered: set[str] = set()
        self._template: tuple[str, dict[str, str], bytes] | None = None
        self.quiet = True  # the fake Saleor builds no deliveries while the bench sets orders up
        self.note_times: dict[str, float] = {}
        self._patch_saleor()

    # -- fakes --------------------------------------------------------------------------------

    def _patch_saleor(self) -> None:
        saleor = self.saleor
        original = saleor._emit

        def emit(order: dict[str, Any], event: str, principal: dict[str, Any], **fields: Any) -> list[Any]:
            if principal.get("__typename") == "App" and principal.get("id") == saleor.app_id:
                # The app's own note (ORDER_UPDATED) or metadata (ORDER_METADATA_UPDATED): record when
                # the note landed; the echo webhook is not built (the app ignores its own events).
                if event == "ORDER_UPDATED":
                    self.note_times.setdefault(order["id"], time.monotonic())
                return []
            if self.quiet:
                return []
            return original(order, event, principal, **fields)  # type: ignore[no-any-return]  # the fake's bound method, saved untyped

        saleor._emit = emit
        self._original_emit = original

    def make_orders(self, count: int) -> list[str]:
        """Shipped (FULFILLED) Klarna orders in the fake Saleor, authorized in the fake Klarna."""
        ids = []
        for _ in range(count):
            kid = self.klarna.create_order(order_amount=ORDER_MINOR, currency="USD")
            order_id = self.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid)
            with self.saleor._lock:
                lines = self.saleor._orders[order_id]["lines"]
                quantities = {line["id"]: line["quantity"] for line in lines}
            self.saleor.fulfill(order_id, quantities, tracking_number="1Z999AA10123456784")
            ids.append(order_id)
        return ids

    def template(self) -> tuple[str, dict[str, str], bytes]:
        """A real ORDER_UPDATED delivery of a shipped order, as the fake Saleor builds and signs it."""
        if self._template is None:
            order_id = self.make_orders(1)[0]
            with self.saleor._lock:
                deliveries = self._original_emit(self.saleor._orders[order_id], "ORDER_UPDATED", self._staff)
            hook = next(d for d in deliveries if d.event == "ORDER_UPDATED")
            self._template = (order_id, dict(hook.headers), hook.body)
        return self._template

    def deliveries(self, order_ids: Sequence[str]) -> list[tuple[dict[str, str], bytes]]:
        """One signed ORDER_UPDATED per order: the template body with the order id replaced."""
        template_id, headers, body = self.template()
        out = []
        for order_id in order_ids:
            new_body = body.replace(template_id.encode(), order_id.encode())
            signature = self.saleor.sign(new_body)
            out.append(({**headers, "Saleor-Signature": signature, "X-Saleor-Signature": signature}, new_body))
        return out

    def fake_order_ids(self, count: int) -> list[str]:
        return [self._gid("Order", uuid.uuid4()) for _ in range(count)]

    def reset_fakes(self) -> None:
        with self.klarna._lock:
            self.klarna.requests.clear()
        self.saleor.graphql_requests.clear()
        self.note_times.clear()

    # -- databases ----------------------------------------------------------------------------

    def postgres(self) -> str:
        if self.pg_url is None:
            import psycopg

            self.pg_name = f"klarna_om_bench_{os.getpid()}_{secrets.token_hex(4)}"
            with psycopg.connect(self.cfg.postgres_admin, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.pg_url = f"{self.cfg.postgres_admin.rsplit('/', 1)[0]}/{self.pg_name}"
            db = Database(self.pg_url)
            db.upgrade()
            db.dispose()
        return self.pg_url

    def sqlite(self) -> str:
        if not (self.workdir / "app.sqlite3").exists():
            db = Database(self.sqlite_url)
            db.upgrade()
            db.dispose()
        return self.sqlite_url

    def truncate(self, url: str) -> None:
        """Empty the per-order tables between runs; the installation and settings stay."""
        tables = [m.__tablename__ for m in (ProcessException, Note, Operation, Job, Delivery)]
        db = Database(url)
        with db.engine.begin() as conn:
            if db.is_postgres:
                conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for table in tables:
                    conn.execute(text(f"DELETE FROM {table}"))
        db.dispose()

    def postgres_cpu(self) -> float:
        if not self.pg_name:
            return 0.0
        return sum(procfs.cpu_seconds(pid) for pid in procfs.postgres_backends(self.pg_name))

    # -- processes ----------------------------------------------------------------------------

    def _env(self, database_url: str, port: int, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")) if p),
            "DATABASE_URL": database_url, "KLARNA_APP_SECRET_KEYS": SECRET,
            "KLARNA_APP_PUBLIC_URL": f"http://127.0.0.1:{port}", "KLARNA_APP_ENV": "production",
            "KLARNA_APP_INSTANCE_PATH": str(self.workdir), "KLARNA_BASE_URL": self.klarna_server.base_url,
            "KLARNA_APP_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(self.cfg.web_concurrency),
            "KLARNA_APP_WORKER_CONCURRENCY": str(self.cfg.worker_concurrency),
            "KLARNA_APP_KLARNA_RATE_PER_SECOND": str(self.cfg.klarna_rate),
            # production refuses loopback Saleors unless they are on the allowlist (plugin/http.py)
            "KLARNA_APP_ALLOWED_SALEOR_URLS": r"re:http://127\.0\.0\.1(:[0-9]+)?/.*",
            "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",
            **extra,
        }  # fmt: skip
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def _spawn(self, role: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log = self.workdir / f"{role}-{len(self.procs)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=fh, stderr=subprocess.STDOUT)
        proc = Proc(role, popen, log)
        self.procs.append(proc)
        return proc

    def start_web(self, name: str, database_url: str | None, spec: str | None = None, **extra: str) -> tuple[Proc, int]:
        """gunicorn -c gunicorn.conf.py [spec]: the app (spec None) or a reference app."""
        port = free_port()
        env = self._env(database_url or self.sqlite_url, port, **extra)
        # gunicorn's asyncio worker: a reference WSGI app goes behind the same bridge
        app = [f"plugin.asgi:bridge({spec!r})"] if spec else []
        cmd = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, *app]
        proc = self._spawn(f"web-{name}", cmd, env)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"gunicorn ({name}) exited: {proc.log.read_text()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return proc, port
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({name}) did not start: {proc.log.read_text()[-3000:]}")

    def sizing(self, workers: int, database_url: str) -> Sizing:
        """Jobs at once and database pool per worker process, within ``worker_connections`` in total.

        Each process's pool holds up to one connection per running job. When the pools could hold
        more than the budget, the pool is made smaller (KLARNA_APP_DB_POOL_SIZE, where the app has
        it; jobs then wait for a connection) or else the concurrency is lowered.
        """
        from plugin.db import make_engine

        def pool_max(**kwargs: int) -> int:
            engine = make_engine(database_url, **kwargs)
            size: int = engine.pool.size() + max(0, int(getattr(engine.pool, "_max_overflow", 0)))  # type: ignore[attr-defined]  # QueuePool.size(), not on the Pool base type
            engine.dispose()
            return size

        wanted = self.cfg.worker_concurrency
        share = max(1, self.cfg.worker_connections // workers)
        default = pool_max()
        if min(wanted + 1, default) <= share:
            return Sizing(wanted, min(wanted + 1, default), None)
        configurable = "pool_size" in inspect.signature(make_engine).parameters and "db_pool_size" in {
            f.name for f in dataclasses.fields(Settings)
        }
        if configurable:
            for size in range(share, 0, -1):
                if pool_max(pool_size=size) <= share:
                    return Sizing(wanted, pool_max(pool_size=size), size)
        return Sizing(max(1, share - 1), share, None)

    def start_workers(self, count: int, database_url: str, sizing: Sizing | None = None) -> list[Proc]:
        script = Path(sys.executable).parent / "klarna-om"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "plugin.cli"]
        env = self._env(database_url, 0)
        if sizing is not None:
            env["KLARNA_APP_WORKER_CONCURRENCY"] = str(sizing.concurrency)
            if sizing.pool_size is not None:
                env["KLARNA_APP_DB_POOL_SIZE"] = str(sizing.pool_size)
        procs = []
        for _ in range(count):
            if self.cfg.profile:
                out = self.workdir / f"profile-{secrets.token_hex(4)}.json"
                proc = self._spawn(
                    "worker", [sys.executable, "-m", "plugin.benchmarks.sampler", str(out), "--", "worker"], env
                )
                proc.profile = out
            else:
                proc = self._spawn("worker", [*base, "worker"], env)
            procs.append(proc)
        deadline = time.monotonic() + 60
        for proc in procs:
            while "started" not in proc.log.read_text():
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {proc.log.read_text()[-3000:]}")
                time.sleep(0.05)
        return procs

    def stop(self, procs: Sequence[Proc]) -> None:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
            if proc in self.procs:
                self.procs.remove(proc)

    # -- install ------------------------------------------------------------------------------

    def install(self, port: int, database_url: str) -> None:
        """Saleor installs the app (once); another database gets the same installation over /api/register."""
        if database_url in self.registered:
            return
        public = f"http://127.0.0.1:{port}"
        if self.saleor.app_token is None:
            result = self.saleor.install(f"{public}/api/manifest")
            if not result.ok:
                raise RuntimeError(f"install failed: {result}")
        else:
            response = requests.post(
                f"{public}/api/register", json={"auth_token": self.saleor.app_token}, timeout=10,
                headers={"Saleor-Api-Url": self.saleor.api_url, "Saleor-Domain": self.saleor.domain},
            )  # fmt: skip
            if response.status_code != 200:
                raise RuntimeError(f"register failed: {response.status_code} {response.text}")
        settings = Settings(public_url=public, database_url=database_url, secret_keys=(SECRET,),
                            instance_path=self.workdir, klarna_base_url=self.klarna_server.base_url,
                            saleor_allow_loopback=True).validated()  # fmt: skip
        services = Services.build(settings)
        with services.db.transaction() as session:
            services.store.save(session, self.saleor.api_url,
                                MerchantSettings(channel="*", username=self.klarna.username, password=self.klarna.password))  # fmt: skip
        services.db.dispose()
        self.registered.add(database_url)

    def ensure_installed(self, database_url: str) -> None:
        if database_url not in self.registered:
            web, port = self.start_web("install", database_url)
            try:
                self.install(port, database_url)
            finally:
                self.stop([web])

    # -- load ---------------------------------------------------------------------------------

    def launch_load(
        self, port: int, items: Sequence[tuple[dict[str, str], bytes]]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        tag = secrets.token_hex(4)
        source, target = self.workdir / f"load-{tag}.in", self.workdir / f"load-{tag}.out"
        job = {"host": "127.0.0.1", "port": port, "path": WEBHOOK_PATH, "requests": list(items),
               "senders": self.cfg.senders, "processes": self.cfg.loadgen_processes}  # fmt: skip
        with open(source, "wb") as fh:
            pickle.dump(job, fh)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH", "")) if p),
        }
        popen = subprocess.Popen(
            [sys.executable, "-m", "plugin.benchmarks.loadgen", str(source), str(target)], cwd=self.workdir, env=env
        )
        return popen, target

    def finish_load(self, popen: subprocess.Popen[bytes], target: Path) -> LoadResult:
        code = popen.wait()
        if code != 0 or not target.exists():
            raise RuntimeError(f"load generator failed with exit code {code}")
        with open(target, "rb") as fh:
            data = pickle.load(fh)
        return LoadResult(data["records"], data["errors"], data["cpu"])

    def load(self, port: int, items: Sequence[tuple[dict[str, str], bytes]]) -> LoadResult:
        return self.finish_load(*self.launch_load(port, items))

    # -- (a) acknowledgement ------------------------------------------------------------------

    def part_a(self, results: Results) -> None:
        cfg = self.cfg
        if not cfg.ack_servers[0].startswith("app"):
            self.ensure_installed(self.postgres() if "app-postgres" in cfg.ack_servers else self.sqlite())
        jwks_file = self.workdir / "jwks.json"
        signed: list[list[tuple[dict[str, str], bytes]]] = []

        def webhooks() -> tuple[list[tuple[dict[str, str], bytes]], list[tuple[dict[str, str], bytes]]]:
            if not signed:  # after the first install: the deliveries are addressed to the installed app
                self.echo(f"(a) acknowledgement: signing {cfg.ack_warmup + cfg.ack_requests} webhooks ...")
                signed.append(self.deliveries(self.fake_order_ids(cfg.ack_warmup)))
                signed.append(self.deliveries(self.fake_order_ids(cfg.ack_requests)))
                jwks_file.write_text(json.dumps(self.saleor.jwks))
            return signed[0], signed[1]

        if self.saleor.app_token is not None:
            webhooks()
        for server in cfg.ack_servers:
            kind, _, backend = server.partition("-")
            database = {"sqlite": "SQLite", "postgres": "PostgreSQL", "": "-"}[backend]
            if kind == "bare":
                proc, port = self.start_web(server, None, "plugin.benchmarks.reference_apps:bare()")
            elif kind == "durable":
                url = self.postgres() if backend == "postgres" else f"sqlite:///{self.workdir / 'durable.sqlite3'}"
                create_schema(url)
                proc, port = self.start_web(server, url, "plugin.benchmarks.reference_apps:durable()",
                                            BENCH_DATABASE_URL=url, BENCH_JWKS_FILE=str(jwks_file))  # fmt: skip
            else:
                url = self.postgres() if backend == "postgres" else self.sqlite()
                proc, port = self.start_web(server, url)
                self.install(port, url)
            try:
                warm, measured = webhooks()
                self.load(port, warm)
                before = self.snapshot({"web": proc.pid})
                result = self.load(port, measured)
                after = self.snapshot({"web": proc.pid})
            finally:
                self.stop([proc])
            web_cpu = after.values["web"] - before.values["web"]
            ok = len(result.ok)
            lat = result.latencies_ms()
            ours = web_cpu + result.cpu + sum(after.values[k] - before.values[k] for k in ("bench", "postgres"))
            row = AckRow(
                server={"bare": "bare Flask (reference)", "durable": "minimal durable (reference)", "app": "the app"}[kind],
                database=database, sent=len(result.records), ok=ok, rate=ok / result.span if result.span else 0.0,
                p50=percentile(lat, 50), p99=percentile(lat, 99), cpu_ms=web_cpu / max(ok, 1) * 1000,
                loadgen_cpu_ms=result.cpu / max(len(result.records), 1) * 1000,
                others_cores=self._others(before, after, ours),
            )  # fmt: skip
            results.ack.append(row)
            if result.errors:
                results.notes.append(f"(a) {server}: {len(result.errors)} connection errors, e.g. {result.errors[0]}")
            self.echo(f"    {server:18s} {row.rate:7.0f}/s  p50 {row.p50:6.1f} ms  p99 {row.p99:6.1f} ms  "
                      f"cpu {row.cpu_ms:5.2f} ms/webhook  ok {ok}/{row.sent}")  # fmt: skip

    # -- (b) end to end -----------------------------------------------------------------------

    def part_b(self, results: Results) -> None:
        cfg = self.cfg
        url = self.postgres()
        web, port = self.start_web("app-postgres-e2e", url)
        try:
            self.install(port, url)
            for latency in cfg.e2e_latencies:
                for workers in cfg.e2e_workers:
                    row = self.e2e_run(url, web, port, latency, workers, cfg.e2e_orders)
                    results.e2e.append(row)
        finally:
            self.stop([web])

    def e2e_run(self, url: str, web: Proc, port: int, latency: float, workers: int, count: int) -> E2ERow:
        sizing = self.sizing(workers, url)
        self.echo(
            f"(b) end to end: Klarna {latency * 1000:.0f} ms, {workers} worker(s) x ({sizing}), {count} orders ..."
        )
        self.truncate(url)
        self.reset_fakes()
        self.klarna.latency = latency
        orders = self.make_orders(count)
        items = self.deliveries(orders)
        captures_before = self.klarna.counts()["captures"]
        procs = self.start_workers(workers, url, sizing)
        try:
            pids = {"web": web.pid, **{f"worker{i}": p.pid for i, p in enumerate(procs)}}
            for proc in procs:
                if proc.profile is not None:
                    proc.popen.send_signal(signal.SIGUSR1)  # the profile starts now, without start-up
            before = self.snapshot(pids)
            popen, target = self.launch_load(port, items)
            timeout = 30 + count * (0.6 if latency else 0.2)
            done_at, timed_out = self._wait_notes(orders, timeout)
            after = self.snapshot(pids)
            load = self.finish_load(popen, target)
        finally:
            self.stop(procs)
        worker_cpu = sum(after.values[k] - before.values[k] for k in pids if k.startswith("worker"))
        web_cpu = after.values["web"] - before.values["web"]
        bench_cpu = after.values["bench"] - before.values["bench"]
        pg_cpu = after.values["postgres"] - before.values["postgres"]
        done = [o for o in orders if o in self.note_times]
        start = min((r[1] for r in load.records), default=before.at)
        seconds = (done_at - start) if done else float("nan")
        acked = {items_index: end for items_index, _, end, status in load.records if status == 200}
        per_order = [self.note_times[o] - acked[i] for i, o in enumerate(orders) if o in self.note_times and i in acked]
        n = max(len(done), 1)
        reports = [json.loads(p.profile.read_text()) for p in procs if p.profile is not None and p.profile.exists()]
        row = E2ERow(
            latency=latency, workers=workers, sizing=sizing, orders=count, done=len(done),
            captured=self.klarna.counts()["captures"] - captures_before, seconds=seconds,
            rate=len(done) / seconds if done and seconds > 0 else 0.0,
            worker_cpu_ms=worker_cpu / n * 1000, web_cpu_ms=web_cpu / n * 1000, bench_cpu_ms=bench_cpu / n * 1000,
            postgres_cpu_ms=pg_cpu / n * 1000,
            others_cores=self._others(before, after, worker_cpu + web_cpu + bench_cpu + pg_cpu + load.cpu),
            busy_cores=self._busy(before, after),
            latency_p50=percentile(per_order, 50), latency_p99=percentile(per_order, 99), timed_out=timed_out,
            profile=sampler.merge(reports) if reports else None,
        )  # fmt: skip
        self.echo(f"    {row.rate:6.1f} orders/s  worker cpu {row.worker_cpu_ms:5.2f} ms/order  done {row.done}/{count}"
                  f"  captured {row.captured}{'  TIMED OUT' if timed_out else ''}")  # fmt: skip
        return row

    def _wait_notes(self, orders: Sequence[str], timeout: float) -> tuple[float, bool]:
        deadline = time.monotonic() + timeout
        pending = list(orders)
        while time.monotonic() < deadline:
            pending = [o for o in pending if o not in self.note_times]
            if not pending:
                return max(self.note_times[o] for o in orders), False
            time.sleep(0.05)
        done = [self.note_times[o] for o in orders if o in self.note_times]
        return (max(done) if done else time.monotonic()), True

    # -- (c) burst ----------------------------------------------------------------------------

    def part_c(self, results: Results) -> None:
        cfg = self.cfg
        url = self.postgres()
        count = cfg.burst
        self.ensure_installed(url)
        self.echo(f"(c) burst: preparing {count} shipped orders and their signed webhooks ...")
        self.truncate(url)
        self.reset_fakes()
        self.klarna.latency = cfg.burst_latency
        orders = self.make_orders(count)
        items = self.deliveries(orders)
        burst_sizing = self.sizing(cfg.burst_workers, url)
        web, port = self.start_web("app-postgres-burst", url)
        procs: list[Proc] = []
        peaks: dict[int, tuple[str, int]] = {}
        stop_sampling = threading.Event()

        def sample() -> None:
            while True:
                for role, root in [("web", web.pid)] + [("worker", p.pid) for p in procs]:
                    for pid in procfs.tree(root):
                        hwm = procfs.status_kb(pid, "VmHWM")
                        if hwm is not None:
                            label = role if role == "worker" else ("web master" if pid == root else "web worker")
                            peaks[pid] = (label, max(hwm, peaks.get(pid, ("", 0))[1]))
                if stop_sampling.wait(0.25):
                    return

        try:
            procs = self.start_workers(cfg.burst_workers, url, burst_sizing)
            captures_before = self.klarna.counts()["captures"]
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            pids = {"web": web.pid, **{f"worker{i}": p.pid for i, p in enumerate(procs)}}
            before = self.snapshot(pids)
            self.echo(f"    sending {count} webhooks with {cfg.senders} senders ...")
            popen, target = self.launch_load(port, items)
            deadline = time.monotonic() + cfg.burst_wait
            captured_at, captured = None, 0
            while time.monotonic() < deadline:
                captured = self.klarna.counts()["captures"] - captures_before
                if captured >= count:
                    captured_at = time.monotonic()
                    break
                time.sleep(0.05)
            after = self.snapshot(pids)
            load = self.finish_load(popen, target)
            stop_sampling.set()
            sampler.join(5)
        finally:
            stop_sampling.set()
            self.stop(procs)
            self.stop([web])
        start = min((r[1] for r in load.records), default=before.at)
        acked_at = max((r[2] for r in load.records), default=start)
        n = max(captured, 1)
        results.burst = BurstResult(
            webhooks=count, workers=cfg.burst_workers, sizing=burst_sizing,
            latency=cfg.burst_latency, ok=len(load.ok),
            ack_seconds=acked_at - start, ack_rate=len(load.ok) / (acked_at - start) if acked_at > start else 0.0,
            captured=captured, captured_seconds=(captured_at or after.at) - start, timed_out=captured_at is None,
            projected_seconds=self._projection(start, after.at, captured, count, captured_at),
            busy_cores=self._busy(before, after),
            others_cores=self._others(before, after, sum(after.values[k] - before.values[k] for k in after.values) + load.cpu),
            peaks=sorted(((role, pid, kb) for pid, (role, kb) in peaks.items()), key=lambda p: (p[0], p[1])),
            worker_cpu_ms=sum(after.values[k] - before.values[k] for k in pids if k.startswith("worker")) / n * 1000,
            web_cpu_ms=(after.values["web"] - before.values["web"]) / max(len(load.ok), 1) * 1000,
        )  # fmt: skip
        b = results.burst
        self.echo(f"    acknowledged {b.ok}/{count} in {b.ack_seconds:.1f} s ({b.ack_rate:.0f}/s); "
                  f"captured {b.captured}/{count} after {b.captured_seconds:.1f} s")  # fmt: skip

    @staticmethod
    def _projection(start: float, now: float, captured: int, count: int, captured_at: float | None) -> float:
        """When every order would be captured at the rate seen so far (the wait is capped)."""
        if captured_at is not None:
            return captured_at - start
        if captured <= 0:
            return float("nan")
        return (now - start) * count / captured

    # -- (d) client CPU per call ---------------------------------------------------------------

    def part_d(self, results: Results) -> None:
        calls = self.cfg.client_calls
        self.echo(f"(d) client CPU: {calls} calls through each client ...")
        results.client_rows = clients.measure(calls=calls, warmup=max(20, calls // 20))
        for row in results.client_rows:
            self.echo(f"    {row.name:38s} {row.cpu_us:7.0f} µs CPU per call")

    # -- measurement --------------------------------------------------------------------------

    def snapshot(self, pids: dict[str, int]) -> CpuSnapshot:
        values = {name: procfs.tree_cpu(pid) for name, pid in pids.items()}
        values["bench"] = procfs.self_cpu()
        values["postgres"] = self.postgres_cpu()
        return CpuSnapshot(time.monotonic(), values, procfs.MachineCpu.read())

    @staticmethod
    def _busy(before: CpuSnapshot, after: CpuSnapshot) -> float:
        wall = after.at - before.at
        return (after.machine.busy - before.machine.busy) / wall if wall > 0 else 0.0

    @staticmethod
    def _others(before: CpuSnapshot, after: CpuSnapshot, ours: float) -> float:
        """Cores used by processes outside the bench (other users of this machine) during a run."""
        wall = after.at - before.at
        if wall <= 0:
            return 0.0
        return max(0.0, (after.machine.busy - before.machine.busy) - ours) / wall

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> Results:
        results = Results(self.cfg)
        results.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        results.machine = machine_info(self.cfg)
        started = time.monotonic()
        steps = {"a": self.part_a, "b": self.part_b, "c": self.part_c, "d": self.part_d}
        for part in ("a", "b", "c", "d"):
            if part in self.cfg.parts:
                steps[part](results)
        results.seconds = time.monotonic() - started
        return results

    def close(self) -> None:
        self.stop(list(self.procs))
        if isinstance(self._fake_module.graphql, _MemoGraphQL):
            self._fake_module.graphql = self._fake_module.graphql._module
        self.saleor.stop()
        self.klarna_server.stop()
        if self.pg_name:
            import psycopg

            try:
                with psycopg.connect(self.cfg.postgres_admin, autocommit=True, connect_timeout=5) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            except psycopg.Error as exc:
                self.echo(f"could not drop the bench database {self.pg_name}: {exc}")
        if self.cfg.keep_workdir:
            self.echo(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def code_version() -> str:
    """The commit measured, and whether the app's files differ from it (others may be editing)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_PARENT, capture_output=True, text=True,
                                timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "plugin", "webhooks", "dashboard_ext", "migrations",
                                "gunicorn.conf.py"], cwd=PACKAGE_PARENT, capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" with uncommitted changes" if dirty else "")


def machine_info(cfg: Config) -> dict[str, str]:
    info = {
        "code": code_version(),
        "cores": str(procfs.cpu_count()),
        "load average at start": procfs.load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    try:
        import psycopg

        with psycopg.connect(cfg.postgres_admin, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            info["postgresql"] = str(row[0]) if row else "?"
    except Exception:  # noqa: BLE001 - informational only
        info["postgresql"] = "unreachable"
    return info


# ------------------------------------------------------------------------------------------ report


def _fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(results: Results) -> str:
    cfg = results.config
    out: list[str] = []
    add = out.append
    add(f"Run {results.started}, {results.seconds:.0f} s{' (--quick)' if cfg.quick else ''}; machine: "
        + ", ".join(f"{k} {v}" for k, v in results.machine.items()) + ".")  # fmt: skip
    add("")
    if results.ack:
        add(f"### (a) Acknowledgement: {cfg.ack_requests} signed ORDER_UPDATED webhooks, {cfg.senders} concurrent senders, "
            f"gunicorn.conf.py ({cfg.web_concurrency} processes x {os.environ.get('KLARNA_APP_WEB_THREADS', '8')} threads)")  # fmt: skip
        add("")
        add(
            "| server | database | webhooks/s | p50 ms | p99 ms | web CPU ms/webhook | app / bare | app / minimal durable | target |"
        )
        add("|---|---|---:|---:|---:|---:|---:|---:|---|")
        bare = next((r for r in results.ack if r.server.startswith("bare")), None)
        order = {"bare Flask (reference)": 0, "minimal durable (reference)": 1, "the app": 2}
        for row in sorted(results.ack, key=lambda r: (r.database != "-", r.database == "PostgreSQL", order[r.server])):
            ref = next((r for r in results.ack if r.server.startswith("minimal") and r.database == row.database), None)
            vs_bare = vs_durable = target = ""
            if row.server == "the app":
                if bare and bare.rate:
                    vs_bare = f"{row.rate / bare.rate:.2f}x"
                if ref and ref.rate:
                    ratio = row.rate / ref.rate
                    vs_durable = f"{ratio:.2f}x"
                    target = (
                        f">= {TARGET_ACK_VS_DURABLE}x minimal durable: {_verdict(ratio >= TARGET_ACK_VS_DURABLE)}; "
                    )
                target += f"p99 <= {TARGET_P99_MS:.0f} ms: {_verdict(row.p99 <= TARGET_P99_MS)}"
            failed = f" ({row.sent - row.ok} failed)" if row.ok < row.sent else ""
            add(f"| {row.server} | {row.database} | {_fmt(row.rate, 0)}{failed} | {_fmt(row.p50)} | {_fmt(row.p99)} | "
                f"{_fmt(row.cpu_ms, 2)} | {vs_bare} | {vs_durable} | {target} |")  # fmt: skip
        add("")
        lg = statistics.mean(r.loadgen_cpu_ms for r in results.ack)
        others = max(r.others_cores for r in results.ack)
        add(f"Load generator CPU: {lg:.2f} ms per request on the same cores; processes outside the bench used up to "
            f"{others:.2f} cores during these runs.")  # fmt: skip
        add("")
    if results.e2e:
        add(f"### (b) End to end: {cfg.e2e_orders} shipped orders per run, webhook -> Klarna capture -> order note "
            f"(PostgreSQL, `klarna-om worker` processes)")  # fmt: skip
        add("")
        add("| Klarna latency | workers x (jobs at once, database connections) | orders/s | vs 1 worker | worker CPU ms/order "
            "| + web CPU ms/order | webhook->note p50 / p99 s | target |")  # fmt: skip
        add("|---:|---:|---:|---:|---:|---:|---:|---|")
        for erow in results.e2e:
            one = next((r for r in results.e2e if r.latency == erow.latency and r.workers == 1), None)
            scale = f"{erow.rate / one.rate:.2f}x" if one and one.rate and erow.workers != 1 else ""
            app_cpu = erow.worker_cpu_ms + erow.web_cpu_ms
            targets = [
                f"app CPU (worker + web) <= {TARGET_CPU_MS_PER_ORDER:.0f} ms: {_verdict(app_cpu <= TARGET_CPU_MS_PER_ORDER)}"
            ]
            if erow.latency >= 0.3:
                targets.append(
                    f">= {TARGET_ORDERS_PER_S_AT_300MS:.0f}/s: {_verdict(erow.rate >= TARGET_ORDERS_PER_S_AT_300MS)}"
                )
            if erow.workers == 2 and one and one.rate:
                targets.append(
                    f"2 vs 1 >= {TARGET_SCALING_2V1}x: {_verdict(erow.rate / one.rate >= TARGET_SCALING_2V1)}"
                )
            incomplete = (
                f" ({erow.done}/{erow.orders} done{', timed out' if erow.timed_out else ''})"
                if erow.done < erow.orders
                else ""
            )
            add(f"| {erow.latency * 1000:.0f} ms | {erow.workers} x ({erow.sizing}) | {_fmt(erow.rate)}{incomplete} | {scale} | "
                f"{_fmt(erow.worker_cpu_ms, 2)} | {_fmt(erow.web_cpu_ms, 2)} | {_fmt(erow.latency_p50, 2)} / {_fmt(erow.latency_p99, 2)} | "
                f"{'; '.join(targets)} |")  # fmt: skip
        add("")
        add("Where the CPU went per order during (b) (ms of CPU per completed order):")
        add("")
        add("| Klarna latency | workers | app workers | app web | bench process (fake Saleor, fake Klarna) | PostgreSQL backends | "
            f"machine busy (cores of {results.machine.get('cores', '?')}) | of which outside the bench |")  # fmt: skip
        add("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for erow in results.e2e:
            add(f"| {erow.latency * 1000:.0f} ms | {erow.workers} | {_fmt(erow.worker_cpu_ms, 2)} | {_fmt(erow.web_cpu_ms, 2)} | "
                f"{_fmt(erow.bench_cpu_ms, 2)} | {_fmt(erow.postgres_cpu_ms, 2)} | {_fmt(erow.busy_cores, 2)} | "
                f"{_fmt(erow.others_cores, 2)} |")  # fmt: skip
        add("")
    profiled: dict[float, tuple[E2ERow, dict[str, Any]]] = {}
    for erow in results.e2e:
        if erow.profile is not None:
            profiled.setdefault(erow.latency, (erow, erow.profile))
    for erow, profile in profiled.values():
        add(f"Where the worker processes' CPU went, Klarna {erow.latency * 1000:.0f} ms, {erow.workers} worker(s) "
            f"(sampled by thread CPU time, `--profile`; {profile['seconds']:.1f} s of CPU sampled over {erow.done} orders):")  # fmt: skip
        add("")
        out.extend(sampler.render(profile, per=max(erow.done, 1)))
        add("")
    if results.burst:
        b = results.burst
        add(f"### (c) Burst: {b.webhooks} webhooks sent as fast as {cfg.senders} senders can, {b.workers} workers x ({b.sizing}), "
            f"Klarna latency {b.latency * 1000:.0f} ms, PostgreSQL")  # fmt: skip
        add("")
        web_peak = max((kb for role, _, kb in b.peaks if role.startswith("web")), default=0) / 1024
        worker_peak = max((kb for role, _, kb in b.peaks if role == "worker"), default=0) / 1024
        all_ok = all(kb / 1024 < TARGET_PEAK_MB for _, _, kb in b.peaks)
        add("| measure | value | target |")
        add("|---|---:|---|")
        add(f"| webhooks acknowledged (200) | {b.ok} / {b.webhooks} | |")
        add(f"| all acknowledged after | {_fmt(b.ack_seconds)} s ({_fmt(b.ack_rate, 0)}/s) | |")
        if b.timed_out:
            add(f"| every order captured after | not within the {_fmt(cfg.burst_wait, 0)} s wait: {b.captured} captured after "
                f"{_fmt(b.captured_seconds)} s ({_fmt(b.captured / b.captured_seconds if b.captured_seconds else 0)} orders/s); "
                f"projected {_fmt(b.projected_seconds, 0)} s for all | |")  # fmt: skip
        else:
            add(f"| every order captured after | {_fmt(b.captured_seconds)} s "
                f"({_fmt(b.captured / b.captured_seconds if b.captured_seconds else 0)} orders/s) | |")  # fmt: skip
        add(f"| app CPU: workers per captured order + web per webhook | {_fmt(b.worker_cpu_ms, 2)} + {_fmt(b.web_cpu_ms, 2)} ms "
            f"| <= {TARGET_CPU_MS_PER_ORDER:.0f} ms: "
            f"{_verdict(b.worker_cpu_ms + b.web_cpu_ms <= TARGET_CPU_MS_PER_ORDER)} |")  # fmt: skip
        add(
            f"| peak memory (VmHWM), largest web process | {_fmt(web_peak)} MB | < {TARGET_PEAK_MB:.0f} MB each: {_verdict(all_ok)} |"
        )
        add(f"| peak memory (VmHWM), largest worker process | {_fmt(worker_peak)} MB | |")
        add(
            f"| machine busy / of which outside the bench | {_fmt(b.busy_cores, 2)} / {_fmt(b.others_cores, 2)} cores | |"
        )
        add("")
        add("Per process: " + ", ".join(f"{role} {kb / 1024:.0f} MB" for role, _, kb in b.peaks) + ".")
        add("")
    if results.client_rows:
        add(f"### (d) Client CPU per call: {results.client_rows[0].calls} calls each against one keep-alive loopback server "
            "(CPU of the calling thread)")  # fmt: skip
        add("")
        out.extend(clients.render(results.client_rows))
        add("")
    for note in results.notes:
        add(f"- {note}")
    if results.notes:
        add("")
    return "\n".join(out)


METHOD = """\
## Method

`klarna-om bench` (see `plugin/benchmarks/`; it ships with the package, so an installed copy runs it
too) runs every comparison side by side in one run on one machine. `klarna-om bench --quick` is a
short run that prints its table and writes no file; `--only a,c` runs some parts; a full run writes
BENCHMARKS.md (the checkout's, else the current folder's), `--output FILE` writes elsewhere. Nothing is
asserted; the targets are printed next to the measurements.

* **Servers.** The app runs under `gunicorn -c python:plugin.gunicorn_conf` (= `gunicorn.conf.py`; asyncio worker, app in `WEB_CONCURRENCY` processes
  x 8 threads), as in production. The two references run under the same configuration with their app
  spec behind the same bridge (`plugin.asgi:bridge`, `plugin/benchmarks/reference_apps.py`): a bare Flask endpoint that answers 200,
  and a minimal durable endpoint that verifies the detached JWS with `plugin.saleor.jws.verify_detached`
  against the JWKS and makes one INSERT through a pooled SQLAlchemy engine (`plugin.db.make_engine`).
  SQLite is a fresh file; PostgreSQL is a fresh database created and dropped by the bench.
* **Webhooks.** Real-shaped ORDER_UPDATED deliveries: the fake Saleor builds one delivery by running
  the app's subscription query on a shipped order; every other delivery is that body with another
  order id, signed with `FakeSaleor.sign` (distinct bodies for distinct orders, so the app records a
  delivery and enqueues a real job per webhook). No in-process worker runs in (a).
* **Load generator.** `plugin/benchmarks/loadgen.py`, a process of its own (forked into 2 processes x 8
  threads = 16 senders), each sender a keep-alive `http.client` connection taking the next request
  from a shared counter. Latency is from sending the request to reading the whole answer. The
  senders send as fast as answers come back (a closed loop), so at saturation p50 is about
  16 / throughput: the p99 target needs both low CPU per webhook and spare cores.
* **CPU.** From `/proc/<pid>/stat` (utime+stime, plus cutime+cstime of reaped children) of the gunicorn
  master and its workers, of each `klarna-om worker` process, of this process (the fakes), and of the
  PostgreSQL backends serving the bench database. "Outside the bench" is the machine's busy time from
  `/proc/stat` minus all of those: other users of the machine.
* **End to end (b).** Workers are real `klarna-om worker` processes; the fake Klarna answers after
  0 ms or 300 ms (`FakeKlarna.latency`); an order counts when its note reaches the fake Saleor.
  Orders/s is orders / (last note - first webhook sent). `KLARNA_APP_WORKER_CONCURRENCY` is 128 so
  that Klarna calls of different orders overlap (a job waits about 0.65 s on a 300 ms Klarna, so
  100 orders/s needs more than 65 jobs in flight). A worker's database pool holds up to one connection
  per running job, up to its size plus overflow; the server is shared and allows 100, so the bench
  keeps the workers' pools within 48 connections together: with 4 workers it sets
  `KLARNA_APP_DB_POOL_SIZE` lower (jobs then wait for a connection), or, on code without that
  setting, lowers the concurrency. The table shows what each run got. Without such a limit, 4
  workers at 64 jobs and the web exhaust `max_connections` ("too many clients already"), jobs fail
  and back off, and throughput collapses.
  The app's Klarna rate limit (`KLARNA_APP_KLARNA_RATE_PER_SECOND`, default 25 requests/s,
  which respects Klarna's per-merchant limit) is raised for the bench; with the default, one
  merchant's throughput is capped near 12 orders/s (a GET and a capture per order) however many
  worker processes run: the bucket is a row per merchant in the database, shared by all of them.
* **Burst (c).** All webhooks as fast as the senders can, with workers running; peak memory is VmHWM
  from `/proc/<pid>/status`, sampled every 0.25 s for every web and worker process.
* **Client CPU (d).** `plugin/benchmarks/clients.py`: the same GET (Klarna's order) and GraphQL POST
  (Saleor's `orderNoteAdd`) through a bare `http.client` connection, a bare `requests.Session`, the
  app's Klarna client and the app's Saleor client, against one keep-alive loopback server in the
  bench process; the figure is the calling thread's CPU (`time.thread_time`) per call, so the
  server's share is not counted.
* **The fakes compete for the same cores.** The fake Saleor and fake Klarna run inside the bench process
  (one interpreter lock for both), and the load generator on the same cores as the app. Their CPU is
  shown per order in (b); on a machine this small they take a large share, so end-to-end figures
  understate what the app does with the cores to itself. To keep the fakes' share down, the bench
  memoizes the fake Saleor's GraphQL parse/validate, and the fake Saleor does not build the echo
  webhooks a real Saleor sends after the app's own note and metadata writes (the app acknowledges and
  ignores those; their cost is the acknowledgement measured in (a)).
* **Other users of the machine.** The bench cannot stop other work on the machine; the "outside the
  bench" figures (cores busy with processes that are not the app, the fakes, the load generator or
  the bench database's backends) say how much of the two cores the run did not have. Compare runs
  only when those figures are close.
"""


def write_report(results: Results, path: Path) -> None:
    kept = ""
    if path.exists():
        existing = path.read_text()
        if NOTES_MARKER in existing:
            kept = existing[existing.index(NOTES_MARKER) :]
    body = "# Benchmarks\n\n" + METHOD + "\n## Results\n\n" + render(results) + "\n"
    path.write_text(body + ("\n" + kept if kept else "\n" + NOTES_MARKER + "\n"))


def run(cfg: Config, echo: Callable[[str], None] = print) -> Results:
    bench = Bench(cfg, echo)
    try:
        results = bench.run()
    except BaseException:
        cfg.keep_workdir = True
        raise
    finally:
        bench.close()
    table = render(results)
    echo("")
    echo(table)
    if cfg.output is not None:
        write_report(results, cfg.output)
        echo(f"written to {cfg.output}")
    return results
