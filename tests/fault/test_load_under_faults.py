"""Issue 5, part 2: a few hundred orders while Klarna fails, connections drop and workers die.

Afterwards every order must show exactly the captures and refunds its story implies (none twice,
none missing), one note per outcome, no job or ledger row left behind, no process exception.
The counts are printed (``pytest -s``), stored as JUnit properties and in
``test-artifacts/fault/<name>.json``. ``KLARNA_OM_FAULT_SEED`` replays a seed (the timing of
kills and drops still varies from run to run; that is the point).

One symptom can remain: a note written twice when a worker's lease runs out while its
``orderNoteAdd`` is in flight and the worker that took over writes it too. The 2 s lease used here
(so that a killed worker's order moves on quickly) is shorter than a Saleor call may take on a
loaded machine; the default lease (60 s) is not. See ``test_crash_windows.py``. Whether a run hits
that window is chance, so a duplicate note turns the result into an xfail (not strict), once
everything else checked out; every other deviation fails.

A ``klarna-om worker`` whose first connection is dropped while it checks the schema at start-up
exits with a traceback (``plugin/cli.py`` ``_services`` → ``check_migrated``); a supervisor would
restart it, and so does the chaos here. Those start-up failures are counted, not failed.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin.settings import Settings
from tests.fault.chaos import (
    KINDS,
    Chaos,
    Driver,
    Rig,
    Story,
    klarna_matches,
    make_story,
    memoized_graphql,
    report,
    summary,
    verify,
)

pytestmark = pytest.mark.fault

SEED = int(os.environ.get("KLARNA_OM_FAULT_SEED", "20240605"))


@pytest.fixture(autouse=True)
def _fast_fake_saleor() -> Iterator[None]:
    with memoized_graphql():
        yield


def _stories(count: int, seed: int) -> list[Story]:
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    kinds[: len(KINDS)] = list(KINDS)  # every kind at least once, whatever the draw
    return [make_story(kind, rng) for kind in kinds]


def _play(rig: Rig, stories: list[Story], chaos: Chaos, *, timeout: float) -> dict[str, float]:
    """Play the stories under fire; then stop the fire and let the app catch up. Returns timings."""
    started = time.monotonic()
    driver = Driver(rig.saleor, rig.klarna, stories, seed=rig.seed, create_per_second=25.0)
    progress = lambda: rig.progress(stories)  # noqa: E731 - a one-line probe passed to the wait loop
    chaos.start()
    driver.start()
    try:
        rig.wait_until(
            lambda: driver.finished or bool(driver.errors), timeout, "the stories to be played", progress=progress
        )
        assert not driver.errors, driver.errors
    finally:
        driver.stop_event.set()
        driver.join(10)
        chaos.stop_event.set()
        chaos.join(10)
    assert not chaos.errors, chaos.errors
    played = time.monotonic()
    # Afterwards: no more faults. Jobs backing off run, dead workers' leases expire, notes go out.
    assert rig.workers is not None and rig.pump is not None
    rig.klarna.fault_rate = 0.0
    rig.workers.restart_dead()
    rig.wait_until(lambda: all(klarna_matches(rig.klarna, s) for s in stories), 60, "Klarna to reflect every order",
                   tick=0.5, progress=progress)  # fmt: skip
    rig.wait_until(lambda: rig.pump.idle() and rig.busy_jobs() == 0, 60, "the queue to drain", progress=progress)
    time.sleep(0.5)
    rig.wait_until(lambda: rig.pump.idle() and rig.busy_jobs() == 0, 30, "the queue to stay drained", progress=progress)
    rig.workers.stop_all()
    return {"seconds_under_fire": round(played - started, 1), "seconds_to_settle": round(time.monotonic() - played, 1)}


def _judge(rig: Rig, stories: list[Story], stats: dict[str, Any]) -> None:
    assert rig.workers is not None
    problems = verify(rig, stories)
    assert not problems.hard, (
        "\n".join(problems.hard[:40]) + f"\n({len(problems.hard)} problems)\n{rig.workers.log_tail()}"
    )
    # A running worker process must only ever end because the chaos killed it. (One that cannot
    # reach the database while starting exits: cli.py's start-up check, see the module docstring.)
    exits = rig.workers.unexpected_exits
    assert not exits, "\n\n".join(f"worker {slot} exited {code}:\n{log}" for slot, code, log in exits)
    if problems.duplicate_notes:
        pytest.xfail(
            f"a lease ran out during orderNoteAdd (2 s lease, see test_crash_windows.py): "
            f"{len(problems.duplicate_notes)} notes written twice, e.g. {problems.duplicate_notes[0]}"
        )


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_orders_survive_klarna_faults_worker_kills_and_dropped_connections(
    settings: Settings, tmp_path: Path, record_property: Any
) -> None:
    # given 200 orders, three `klarna-om worker` processes on PostgreSQL, Klarna failing 30 % of
    # calls with 5xx/429 and dropping the connection after performing some POSTs while they are played
    rig = Rig(settings, tmp_path, fault_rate=0.3, seed=SEED)
    try:
        rig.install()
        stories = _stories(200, SEED)
        rig.start_workers(3, concurrency=4)
        # when workers are SIGKILLed and database connections terminated at random throughout
        chaos = Chaos(workers=rig.workers, klarna=rig.klarna, database_url=rig.database_url, seed=SEED)
        timings = _play(rig, stories, chaos, timeout=300)
        stats = summary(rig, stories, chaos, timings)
        report(record_property, "postgres-load", stats)
        # then the chaos really happened, and every order is exactly right
        assert stats["worker_kills"] >= 5 and stats["db_connections_dropped"] >= 20, stats
        assert stats["injected_5xx"] + stats["injected_429"] >= 100 and stats["dropped_after_performing"] >= 5, stats
        _judge(rig, stories, stats)
    finally:
        rig.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_orders_survive_klarna_faults_and_worker_kills_on_sqlite(
    settings: Settings, tmp_path: Path, record_property: Any
) -> None:
    # given the embedded database shared by two worker processes, the same Klarna faults, and an
    # attempt budget of 3 (the PostgreSQL run has 1000): whatever the budget, every order ends right
    rig = Rig(settings, tmp_path, fault_rate=0.3, seed=SEED + 1, max_attempts=3)
    try:
        rig.install()
        stories = _stories(60, SEED + 1)
        rig.start_workers(2, concurrency=3)
        # when workers are SIGKILLed at random (SQLite has no connections to drop)
        chaos = Chaos(workers=rig.workers, klarna=rig.klarna, database_url=rig.database_url, seed=SEED + 1,
                      kill_every=(0.6, 1.5), max_kills=20)  # fmt: skip
        timings = _play(rig, stories, chaos, timeout=200)
        stats = summary(rig, stories, chaos, timings)
        report(record_property, "sqlite-load", stats)
        assert stats["worker_kills"] >= 2 and stats["dropped_after_performing"] >= 2, stats
        _judge(rig, stories, stats)
    finally:
        rig.close()
