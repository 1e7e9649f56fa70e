"""A shop under load and under fire, for the fault suite.

The pieces are real processes and sockets wherever the fault needs them:

* the app (``create_app``) in this process, reached by the fake Saleor through its WSGI callable;
* a FakeSaleor on a loopback port (the workers read orders and write notes over HTTP); its
  webhooks go through :class:`Pump`, which redelivers like Saleor: 5xx and connection errors are
  retried, 2xx is done, 4xx is never retried (and is counted: in this suite it is a lost event);
* a FakeKlarna on a loopback port, answering 500/503/429 to ``fault_rate`` of all calls and
  dropping the connection after performing a POST whenever :class:`Chaos` injects ``drop_after``;
* ``klarna-om worker`` subprocesses that :class:`Chaos` kills with SIGKILL and restarts;
* on PostgreSQL, :class:`Chaos` terminates the app's and the workers' backends at random.

:class:`Driver` walks every order through a scripted story (ship in one or two shipments, return
part or all, cancel after a partial capture, cancel) at random moments; a step that only makes
sense after Klarna caught up (a return after the capture) waits for it, as a shop admin would.
Each story knows what Klarna must show at the end; :func:`verify` compares.
"""

from __future__ import annotations

import atexit
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, func, not_, select, text
from sqlalchemy.engine import Engine

from plugin.app import Services, create_app
from plugin.db.models import Job, Note, Operation, ProcessException, utcnow
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.klarna import FakeKlarna, FakeKlarnaServer
from plugin.testing.saleor import Delivery, FakeSaleor, wsgi_transport
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
KLARNA_OM = Path(sys.executable).parent / "klarna-om"

TEE = {
    "name": "Monospace Tee",
    "sku": "TEE",
    "quantity": 2,
    "unit_gross": "20.00",
    "unit_net": "20.00",
    "tax_rate": "0.00",
}
SHOE = {
    "name": "Dash Force",
    "sku": "SHOE",
    "quantity": 1,
    "unit_gross": "90.00",
    "unit_net": "90.00",
    "tax_rate": "0.00",
}


# -- a faster fake Saleor ---------------------------------------------------------------------


@contextmanager
def memoized_graphql() -> Iterator[None]:
    """Parse and validate each GraphQL document once.

    The workers send the same three documents thousands of times and the fake Saleor parses and
    validates each against the whole schema: three quarters of its time, and it runs in this
    process, which also plays Saleor's webhooks and Klarna. Results depend only on the text (and
    the schema and rules), and ASTs are never mutated, so caching changes no answer.
    """
    import graphql

    parse, validate = graphql.parse, graphql.validate
    parsed: dict[Any, Any] = {}
    validated: dict[Any, Any] = {}

    def cached_parse(source: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(source, str):
            return parse(source, *args, **kwargs)
        if source not in parsed:
            parsed[source] = parse(source)
        return parsed[source]

    def cached_validate(schema: Any, document: Any, rules: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return validate(schema, document, rules, *args, **kwargs)
        key = (id(schema), id(document), None if rules is None else tuple(rules))
        if key not in validated:
            validated[key] = (schema, document, validate(schema, document, rules))
        return validated[key][2]

    graphql.parse, graphql.validate = cached_parse, cached_validate  # type: ignore[assignment]  # swap graphql-core's functions for memoized ones during the test
    try:
        yield
    finally:
        graphql.parse, graphql.validate = parse, validate  # type: ignore[assignment]  # restore graphql-core's functions


# -- the fake Klarna, counted ------------------------------------------------------------------


class CountingKlarna(FakeKlarna):
    """FakeKlarna that also counts what it answered (injected faults included) and dropped."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.statuses: Counter[int] = Counter()
        self.dropped = 0
        self._stats_lock = threading.Lock()

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable) -> Any:
        def counting_start_response(status: str, headers: list, *args: Any) -> Any:
            with self._stats_lock:
                self.statuses[int(status.split()[0])] += 1
            return start_response(status, headers, *args)

        return super().wsgi_app(environ, counting_start_response)

    def _drop(self, environ: dict[str, Any], seconds: float) -> None:  # type: ignore[override]  # an instance method over the base staticmethod: it counts the drops
        with self._stats_lock:
            self.dropped += 1
        FakeKlarna._drop(environ, seconds)

    def pending_drops(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults if f.kind == "drop_after")


# -- Saleor's webhook delivery -----------------------------------------------------------------


class Pump:
    """Delivers the fake Saleor's outbox to the app from ``threads`` threads, in no particular
    order (Saleor's Celery gives none); retries 5xx and connection errors, never 4xx."""

    def __init__(self, saleor: FakeSaleor, *, threads: int = 4, retry_delay: tuple[float, float] = (0.05, 0.3),
                 seed: int = 0) -> None:  # fmt: skip
        self.saleor = saleor
        self.retry_delay = retry_delay
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.delivered = 0
        self.redelivered = 0
        self.rejected: list[tuple[str, int, bytes]] = []
        self._later: list[tuple[float, int, Delivery]] = []
        self._seq = 0
        self._busy = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"saleor-webhooks-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(5)

    def idle(self) -> bool:
        with self._lock:
            return not self._busy and not self.saleor.outbox and not self._later

    def _next(self) -> Delivery | None:
        with self._lock:
            if self._later and self._later[0][0] <= time.monotonic():
                self.redelivered += 1
                self._busy += 1
                return heapq.heappop(self._later)[2]
            try:
                delivery = self.saleor.outbox.pop(0)
            except IndexError:
                return None
            self._busy += 1
            return delivery

    def _run(self) -> None:
        while not self.stop_event.is_set():
            delivery = self._next()
            if delivery is None:
                time.sleep(0.005)
                continue
            try:
                status, body = self.saleor.deliver(delivery)
            except Exception:
                status, body = 0, b""
            with self._lock:
                if 200 <= status < 300:
                    self.delivered += 1
                elif status == 0 or status >= 500:
                    self._seq += 1
                    heapq.heappush(
                        self._later, (time.monotonic() + self.rng.uniform(*self.retry_delay), self._seq, delivery)
                    )
                else:
                    self.rejected.append((delivery.event, status, body[:300]))
                self._busy -= 1


# -- worker processes --------------------------------------------------------------------------


class WorkerProcs:
    """``klarna-om worker`` subprocesses, each slot restartable; logs under ``log_dir``."""

    def __init__(self, count: int, env: dict[str, str], log_dir: Path, concurrency: int = 4) -> None:
        self.env = env
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._logs: list[Any] = [None] * count
        self._log_offsets = [0] * count
        self.starts = 0
        self.unexpected_exits: list[tuple[int, int | None, str]] = []  # slot, exit code, its log
        self.startup_failures: list[tuple[int, int | None, str]] = []  # died before "worker … started"
        self._lock = threading.Lock()
        atexit.register(self._kill_leftovers)  # never leave workers behind, even on Ctrl-C

    def _kill_leftovers(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def start(self, slot: int) -> None:
        log = self._logs[slot]
        if log is None:
            log = self._logs[slot] = open(self.log_dir / f"worker-{slot}.log", "ab")  # noqa: SIM115 - closed in stop_all
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self._log_offsets[slot] = log.tell()
        self.procs[slot] = subprocess.Popen(
            [str(KLARNA_OM), "worker", "--concurrency", str(self.concurrency)],
            env=self.env, cwd=self.log_dir, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.starts += 1

    def start_all(self) -> None:
        for slot in range(len(self.procs)):
            self.start(slot)

    def kill(self, slot: int) -> None:
        with self._lock:
            proc = self.procs[slot]
            if proc is None:
                return
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.procs[slot] = None

    def restart_dead(self) -> int:
        """Restart slots whose process is gone; an exit we did not cause is recorded."""
        restarted = 0
        with self._lock:
            for slot, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    with open(self.log_dir / f"worker-{slot}.log", "rb") as log:
                        log.seek(self._log_offsets[slot])
                        output = log.read().decode(errors="replace")
                    started = any(
                        line.startswith("worker ") and line.endswith(" started") for line in output.splitlines()
                    )
                    (self.unexpected_exits if started else self.startup_failures).append(
                        (slot, proc.returncode, output[-4000:])
                    )
                    self.procs[slot] = None
                if self.procs[slot] is None:
                    self.start(slot)
                    restarted += 1
        return restarted

    def stop_all(self, timeout: float = 15.0) -> None:
        with self._lock:
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for slot, proc in enumerate(self.procs):
                if proc is None:
                    continue
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                self.procs[slot] = None
            for log in self._logs:
                if log is not None:
                    log.close()
            self._logs = [None] * len(self._logs)
        atexit.unregister(self._kill_leftovers)

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            out.append(f"== {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


# -- chaos -------------------------------------------------------------------------------------


class Chaos(threading.Thread):
    """SIGKILLs workers, terminates PostgreSQL backends, makes Klarna drop connections, at random."""

    def __init__(
        self,
        *,
        workers: WorkerProcs | None,
        klarna: CountingKlarna,
        database_url: str,
        seed: int,
        kill_every: tuple[float, float] = (1.0, 2.5),
        drop_db_every: tuple[float, float] = (0.1, 0.5),
        drop_klarna_every: tuple[float, float] = (0.1, 0.4),
        max_kills: int = 40,
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.workers, self.klarna, self.database_url = workers, klarna, database_url
        self.rng = random.Random(seed)
        self.kill_every, self.drop_db_every, self.drop_klarna_every = kill_every, drop_db_every, drop_klarna_every
        self.stop_event = threading.Event()
        self.max_kills = max_kills  # a restart costs a second of CPU: a slow machine must not get slower
        self.kills = 0
        self.db_drops = 0
        self.klarna_drops_injected = 0
        self.errors: list[str] = []

    def run(self) -> None:
        side = None
        if self.database_url.startswith("postgresql"):
            import psycopg

            side = psycopg.connect(self.database_url, autocommit=True, application_name="chaos-side")
        now = time.monotonic()
        next_kill = now + self.rng.uniform(*self.kill_every)
        next_db = now + self.rng.uniform(*self.drop_db_every)
        next_klarna = now + self.rng.uniform(*self.drop_klarna_every)
        try:
            while not self.stop_event.wait(0.02):
                now = time.monotonic()
                if self.workers is not None:
                    self.workers.restart_dead()
                    if now >= next_kill and self.kills < self.max_kills:
                        next_kill = now + self.rng.uniform(*self.kill_every)
                        self.workers.kill(self.rng.randrange(len(self.workers.procs)))
                        self.kills += 1
                        time.sleep(self.rng.uniform(0, 0.5))
                        self.workers.restart_dead()
                if side is not None and now >= next_db:
                    next_db = now + self.rng.uniform(*self.drop_db_every)
                    self.db_drops += self._terminate_backend(side)
                if now >= next_klarna:
                    next_klarna = now + self.rng.uniform(*self.drop_klarna_every)
                    if self.klarna.pending_drops() < 2:
                        path = self.rng.choice(
                            ["/captures", "/refunds", "/cancel", "/release-remaining-authorization", ""]
                        )
                        self.klarna.inject("drop_after", times=1, method="POST", path_contains=path)
                        self.klarna_drops_injected += 1
        except Exception as exc:
            self.errors.append(repr(exc))
            raise
        finally:
            if side is not None:
                side.close()

    def _terminate_backend(self, side: Any) -> int:
        # Half the time aim at a connection that is doing something (mid-query or mid-transaction).
        busy = "AND state <> 'idle'" if self.rng.random() < 0.5 else ""
        row = side.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ("
            " SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            f" AND backend_type = 'client backend' AND application_name NOT LIKE 'chaos-%' {busy}"
            " ORDER BY random() LIMIT 1) victims"
        ).fetchone()
        return int(row[0]) if row else 0


# -- stories -----------------------------------------------------------------------------------


@dataclass
class Expect:
    captures: list[int]
    refunds: list[int]
    status: str
    cancels: int = 0
    releases: int = 0

    @property
    def notes(self) -> int:
        return len(self.captures) + len(self.refunds) + self.cancels + self.releases


@dataclass
class Story:
    kind: str
    shipping: int  # minor units
    steps: list[tuple[Any, ...]]
    expect: Expect
    order_id: str = ""
    klarna_id: str = ""
    lines: dict[str, str] = field(default_factory=dict)  # "tee"/"shoe" -> order line id
    fulfillments: list[str] = field(default_factory=list)
    step: int = 0
    not_before: float = 0.0

    @property
    def done(self) -> bool:
        return self.step >= len(self.steps)


KINDS = {"ship-one": 20, "ship-two": 20, "return-part": 25, "return-all": 10, "cancel-after-capture": 15, "cancel": 10}


def make_story(kind: str, rng: random.Random) -> Story:
    shipping = rng.choice([0, 1000])
    full = 13000 + shipping
    two = rng.random() < 0.5
    ship_all: list[tuple[Any, ...]] = (
        [("fulfill", {"tee": 1, "shoe": 1}), ("fulfill", {"tee": 1})] if two else [("fulfill", {"tee": 2, "shoe": 1})]
    )
    captures = [11000 + shipping, 2000] if two else [full]
    if kind == "ship-one":
        return Story(kind, shipping, [("fulfill", {"tee": 2, "shoe": 1})], Expect([full], [], "CAPTURED"))
    if kind == "ship-two":
        return Story(kind, shipping, [("fulfill", {"tee": 1, "shoe": 1}), ("fulfill", {"tee": 1})],
                     Expect([11000 + shipping, 2000], [], "CAPTURED"))  # fmt: skip
    if kind == "return-part":
        return Story(kind, shipping, [*ship_all, ("await_captured", full), ("return", 0, {"tee": 1})],
                     Expect(captures, [2000], "CAPTURED"))  # fmt: skip
    if kind == "return-all":
        refunds = [13000, shipping] if shipping else [13000]
        return Story(kind, shipping, [("fulfill", {"tee": 2, "shoe": 1}), ("await_captured", full),
                                      ("return", 0, {"tee": 2, "shoe": 1})], Expect([full], refunds, "CAPTURED"))  # fmt: skip
    if kind == "cancel-after-capture":
        return Story(kind, shipping, [("fulfill", {"shoe": 1}), ("await_captured", 9000 + shipping),
                                      ("cancel_fulfillment", 0), ("cancel_order",)],
                     # issue 10: the cancelled shipment's goods are refunded, and with the order cancelled its shipping
                     Expect([9000 + shipping], [9000, shipping] if shipping else [9000], "CAPTURED", releases=1))  # fmt: skip
    if kind == "cancel":
        return Story(kind, shipping, [("cancel_order",)], Expect([], [], "CANCELLED", cancels=1))
    raise ValueError(kind)


class Driver(threading.Thread):
    """Creates the orders at a steady pace and moves each story on at random moments."""

    def __init__(self, saleor: FakeSaleor, klarna: FakeKlarna, stories: list[Story], *, seed: int,
                 create_per_second: float = 20.0, step_delay: tuple[float, float] = (0.0, 1.5)) -> None:  # fmt: skip
        super().__init__(name="driver", daemon=True)
        self.saleor, self.klarna, self.stories = saleor, klarna, stories
        self.rng = random.Random(seed)
        self.create_per_second, self.step_delay = create_per_second, step_delay
        self.stop_event = threading.Event()
        self.steps_done = 0
        self.errors: list[str] = []

    @property
    def finished(self) -> bool:
        return all(s.order_id and s.done for s in self.stories)

    def run(self) -> None:
        try:
            started = time.monotonic()
            created = 0
            while not self.stop_event.is_set() and not self.finished:
                now = time.monotonic()
                while created < len(self.stories) and created <= (now - started) * self.create_per_second:
                    self._create(self.stories[created])
                    created += 1
                for story in self.stories[:created]:
                    if not story.done and now >= story.not_before and self._advance(story):
                        story.step += 1
                        story.not_before = time.monotonic() + self.rng.uniform(*self.step_delay)
                        self.steps_done += 1
                time.sleep(0.01)
        except Exception as exc:
            self.errors.append(repr(exc))
            raise

    def _create(self, story: Story) -> None:
        amount = 13000 + story.shipping
        story.klarna_id = self.klarna.create_order(order_amount=amount, currency="USD")
        story.order_id = self.saleor.create_order(
            lines=[dict(TEE), dict(SHOE)], currency="USD", shipping_gross=str(Decimal(story.shipping) / 100),
            klarna_order_id=story.klarna_id,
        )  # fmt: skip
        tee, shoe = (line["id"] for line in self.saleor.order(story.order_id)["lines"])
        story.lines = {"tee": tee, "shoe": shoe}
        story.not_before = time.monotonic() + self.rng.uniform(*self.step_delay)

    def _advance(self, story: Story) -> bool:
        """Perform the story's next step; False when it must wait for Klarna."""
        step = story.steps[story.step]
        name = step[0]
        if name == "fulfill":
            lines = {story.lines[k]: q for k, q in step[1].items()}
            story.fulfillments.append(self.saleor.fulfill(story.order_id, lines, tracking_number=f"T{self.steps_done}"))
        elif name == "await_captured":
            return bool(self.klarna.order(story.klarna_id)["captured_amount"] >= step[1])
        elif name == "return":
            lines = {story.lines[k]: q for k, q in step[2].items()}
            self.saleor.return_products(story.order_id, story.fulfillments[step[1]], lines)
        elif name == "cancel_fulfillment":
            self.saleor.cancel_fulfillment(story.order_id, story.fulfillments[step[1]])
        elif name == "cancel_order":
            self.saleor.cancel_order(story.order_id)
        else:
            raise ValueError(name)
        return True


# -- the whole rig -----------------------------------------------------------------------------


def observer_engine(database_url: str) -> Engine:
    """An engine the chaos never aims at (its backends are named ``chaos-observer``)."""
    if database_url.startswith("postgresql"):
        url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
        return create_engine(url, connect_args={"application_name": "chaos-observer"}, pool_pre_ping=True)
    return create_engine(database_url, connect_args={"timeout": 30})


class Rig:
    """Everything of one fault run; ``close()`` stops it all."""

    def __init__(self, settings: Settings, tmp_path: Path, *, fault_rate: float, seed: int,
                 lease_seconds: int = 2, max_attempts: int = 1000) -> None:  # fmt: skip
        self.seed = seed
        self.max_attempts = max_attempts
        self.klarna = CountingKlarna(seed=seed)
        self.klarna.fault_rate = fault_rate
        self.klarna_server = FakeKlarnaServer(self.klarna).start()
        self.settings = replace(settings, klarna_base_url=self.klarna_server.base_url, max_attempts=max_attempts)
        self.services = Services.build(self.settings)
        self.app = create_app(services=self.services)
        self.saleor = FakeSaleor(app_transport=wsgi_transport(self.app.wsgi_app)).start()
        self.database_url = settings.database_url
        self.observer = observer_engine(self.database_url)
        self.log_dir = tmp_path / "workers"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.worker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_")},
            "DATABASE_URL": self.database_url, "KLARNA_APP_SECRET_KEYS": SECRET,
            "KLARNA_BASE_URL": self.klarna_server.base_url, "KLARNA_APP_JOB_LEASE_SECONDS": str(lease_seconds),
            "KLARNA_APP_MAX_ATTEMPTS": str(max_attempts), "KLARNA_APP_RETRY_BASE_SECONDS": "0.001",
            "KLARNA_APP_KLARNA_RATE_PER_SECOND": "1000", "KLARNA_APP_LOG_LEVEL": "WARNING",
            "KLARNA_APP_INSTANCE_PATH": str(tmp_path / "instance"),
            "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",  # the fake Saleor listens on loopback
            "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        self.pump: Pump | None = None
        self.workers: WorkerProcs | None = None

    def install(self) -> None:
        result = self.saleor.install(f"{self.settings.public_base}/api/manifest")
        assert result.ok, result
        merchant = MerchantSettings(channel="*", username=self.klarna.username, password=self.klarna.password)
        with self.services.db.transaction() as session:
            self.services.store.save(session, self.saleor.api_url, merchant)
        self.saleor.auto_deliver = False
        self.pump = Pump(self.saleor, seed=self.seed)
        self.pump.start()

    def start_workers(self, count: int, concurrency: int = 4) -> WorkerProcs:
        self.workers = WorkerProcs(count, self.worker_env, self.log_dir, concurrency)
        self.workers.start_all()
        return self.workers

    def busy_jobs(self) -> int:
        with self.observer.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Job).where(*working())) or 0)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str, tick: float = 0.2,
                   progress: Callable[[], str] | None = None) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(tick)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {(progress or self.progress)()}")

    def progress(self, stories: list[Story] | None = None) -> str:
        """Where things stand, for a timeout's message."""
        parts = [f"klarna calls {len(self.klarna.requests)}", f"performed {self.klarna.counts()}"]
        if stories is not None:
            parts.append(
                f"stories created {sum(1 for s in stories if s.order_id)}, played {sum(1 for s in stories if s.done)}, "
                f"reflected {sum(1 for s in stories if klarna_matches(self.klarna, s))} of {len(stories)}"
            )
        if self.pump is not None:
            parts.append(f"outbox {len(self.saleor.outbox)}, redelivered {self.pump.redelivered}")
        try:
            with self.observer.connect() as conn:
                rows = conn.execute(select(Job.order_id, Job.requested_seq, Job.done_seq, Job.attempts, Job.run_after,
                                           Job.leased_until, Job.last_error).where(*working())).all()  # fmt: skip
            parts.append(f"busy jobs {len(rows)}: {[tuple(r) for r in rows[:5]]}")
        except Exception as exc:
            parts.append(f"jobs unreadable: {exc!r}")
        return "; ".join(parts)

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop_all()
        if self.pump is not None:
            self.pump.stop()
        self.saleor.stop()
        self.klarna_server.stop()
        self.services.db.dispose()
        self.observer.dispose()


def working() -> tuple[Any, ...]:
    """A job with work due: not one only waiting on the order's schedule (issue 10: no error, due
    later; an open order always has one, and one whose last re-read failed looks again soon)."""
    scheduled = and_(Job.last_error.is_(None), Job.run_after > utcnow() + timedelta(seconds=30))
    return (Job.requested_seq > Job.done_seq, not_(scheduled))


def klarna_matches(klarna: FakeKlarna, story: Story) -> bool:
    if not story.klarna_id:
        return False
    state = klarna.order(story.klarna_id)
    return (
        sorted(c["captured_amount"] for c in state["captures"]) == sorted(story.expect.captures)
        and sorted(r["refunded_amount"] for r in state["refunds"]) == sorted(story.expect.refunds)
        and state["status"] == story.expect.status
    )


@dataclass
class Problems:
    """What is wrong at the end: ``hard`` ones fail the test; ``duplicate_notes`` may be the
    residual lease window (see ``test_load_under_faults.py``)."""

    hard: list[str] = field(default_factory=list)
    duplicate_notes: list[str] = field(default_factory=list)
    give_up_notes: int = 0


GIVE_UP_NOTE = "Klarna: the order could not be synced"


def verify(rig: Rig, stories: list[Story]) -> Problems:
    """Every way the end state can be wrong, as readable lines."""
    problems = Problems()
    hard = problems.hard
    expected_counts = Counter(captures=0, refunds=0, cancels=0, releases=0)
    for story in stories:
        state = rig.klarna.order(story.klarna_id)
        captures = sorted(c["captured_amount"] for c in state["captures"])
        refunds = sorted(r["refunded_amount"] for r in state["refunds"])
        expect = story.expect
        expected_counts.update(captures=len(expect.captures), refunds=len(expect.refunds),
                               cancels=expect.cancels, releases=expect.releases)  # fmt: skip
        where = f"{story.kind} order {story.order_id} (Klarna {story.klarna_id})"
        if captures != sorted(expect.captures):
            hard.append(f"{where}: captures {captures}, expected {sorted(expect.captures)}")
        if refunds != sorted(expect.refunds):
            hard.append(f"{where}: refunds {refunds}, expected {sorted(expect.refunds)}")
        if state["captured_amount"] != sum(expect.captures) or state["refunded_amount"] != sum(expect.refunds):
            hard.append(f"{where}: captured/refunded {state['captured_amount']}/{state['refunded_amount']}")
        if state["status"] != expect.status:
            hard.append(f"{where}: Klarna status {state['status']}, expected {expect.status}")
        if expect.releases and state["remaining_authorized_amount"] != 0:
            hard.append(f"{where}: {state['remaining_authorized_amount']} still authorized after the release")
        # A cancelled shipment's refund carries its capture's reference (issue 10): unique per kind.
        for what, records in (("captured", state["captures"]), ("refunded", state["refunds"])):
            references = [record.get("reference") for record in records]
            if len(references) != len(set(references)):
                hard.append(f"{where}: one reference {what} twice: {references}")
        # A give-up (a small attempt budget) tells the admin; the order is checked again on its own.
        gave_up = [n for n in rig.saleor.notes(story.order_id) if n.startswith(GIVE_UP_NOTE)]
        problems.give_up_notes += len(gave_up)
        notes = [n for n in rig.saleor.notes(story.order_id) if not n.startswith(GIVE_UP_NOTE)]
        if len(set(notes)) != expect.notes:
            hard.append(f"{where}: {len(set(notes))} distinct notes, expected {expect.notes}: {notes}")
        problems.duplicate_notes += [f"{where}: {c}x {n!r}" for n, c in Counter(notes).items() if c > 1]
    counts = rig.klarna.counts()
    for kind, expected in expected_counts.items():
        if counts[kind] != expected:
            hard.append(f"Klarna performed {counts[kind]} {kind}, expected {expected}")
    with rig.observer.connect() as conn:
        lost = conn.execute(select(Job.order_id, Job.requested_seq, Job.done_seq, Job.last_error)
                            .where(*working())).all()  # fmt: skip
        hard += [f"job not done: {tuple(row)}" for row in lost]
        ops = conn.execute(select(Operation.state, func.count()).group_by(Operation.state)).all()
        # "superseded": planned, never sent, no longer wanted (the order changed first).
        hard += [f"{n} ledger rows {state}" for state, n in ops if state not in ("succeeded", "superseded")]
        notes = conn.execute(select(Note.state, func.count()).group_by(Note.state)).all()
        hard += [f"{n} notes {state}" for state, n in notes if state != "written"]
        open_exceptions = conn.execute(select(ProcessException.order_id, ProcessException.error_code, ProcessException.message)
                                       .where(ProcessException.state == "open")).all()  # fmt: skip
        hard += [f"open process exception: {tuple(row)}" for row in open_exceptions]
    if rig.pump is not None and rig.pump.rejected:
        hard.append(f"webhooks refused with 4xx (Saleor never redelivers those): {rig.pump.rejected[:5]}")
    four_xx = {status: n for status, n in rig.klarna.statuses.items() if 400 <= status < 500 and status != 429}
    if four_xx:
        hard.append(f"Klarna answered 4xx (the app sent something wrong): {four_xx}")
    return problems


def summary(rig: Rig, stories: list[Story], chaos: Chaos | None, timings: dict[str, float]) -> dict[str, Any]:
    counts = rig.klarna.counts()
    statuses = rig.klarna.statuses
    with rig.observer.connect() as conn:
        db_notes = conn.scalar(select(func.count()).select_from(Note))
        ledger = dict(conn.execute(select(Operation.state, func.count()).group_by(Operation.state)).all())
        deliveries = conn.scalar(text("SELECT count(*) FROM deliveries"))
    return {
        "database": rig.database_url.split(":", 1)[0],
        "seed": rig.seed,
        "orders": len(stories),
        "stories": dict(Counter(s.kind for s in stories)),
        "klarna_calls": len(rig.klarna.requests),
        "klarna_posts": sum(1 for r in rig.klarna.requests if r.method == "POST"),
        "injected_5xx": statuses[500] + statuses[503],
        "injected_429": statuses[429],
        "dropped_after_performing": rig.klarna.dropped,
        "worker_kills": chaos.kills if chaos else 0,
        "worker_starts": rig.workers.starts if rig.workers else 0,
        "unexpected_worker_exits": len(rig.workers.unexpected_exits) if rig.workers else 0,
        "worker_startup_failures": len(rig.workers.startup_failures) if rig.workers else 0,
        "db_connections_dropped": chaos.db_drops if chaos else 0,
        "webhooks_delivered": rig.pump.delivered if rig.pump else 0,
        "webhooks_redelivered_after_5xx": rig.pump.redelivered if rig.pump else 0,
        "deliveries_recorded": deliveries,
        "captures": counts["captures"],
        "refunds": counts["refunds"],
        "cancels": counts["cancels"],
        "releases": counts["releases"],
        "notes": sum(len(rig.saleor.notes(s.order_id)) for s in stories),
        "distinct_notes": sum(len(set(rig.saleor.notes(s.order_id))) for s in stories),
        "max_attempts": rig.max_attempts,
        "give_up_notes": sum(n.startswith(GIVE_UP_NOTE) for s in stories for n in rig.saleor.notes(s.order_id)),
        "note_rows": db_notes,
        "ledger_rows": {str(k): int(v) for k, v in ledger.items()},
        **timings,
    }


REPORTED: list[str] = []  # printed at the end of the run by tests/fault/conftest.py


def report(record_property: Callable[[str, Any], None], name: str, stats: dict[str, Any]) -> None:
    """Print the counts (with -s; in the run's summary; in a failure's report), keep them in the
    JUnit XML and in test-artifacts/fault/<name>.json."""
    line = f"[fault] {name}: " + json.dumps(stats, sort_keys=False)
    print(line)
    REPORTED.append(line)
    for key, value in stats.items():
        record_property(key, value)
    out = ROOT / "test-artifacts" / "fault"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(stats, indent=2) + "\n")


__all__ = [
    "KINDS",
    "Chaos",
    "CountingKlarna",
    "Driver",
    "Expect",
    "Problems",
    "Pump",
    "Rig",
    "Story",
    "WorkerProcs",
    "klarna_matches",
    "make_story",
    "memoized_graphql",
    "observer_engine",
    "report",
    "summary",
    "verify",
]
