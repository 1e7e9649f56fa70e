"""The worker's poll loop claims several jobs at once while jobs run, not one per finished job."""

from __future__ import annotations

import threading
from typing import Any

from plugin.domain.ledger import ClaimedJob
from plugin.services.sync import SyncDeps
from plugin.worker import Worker


class _Repo:
    """Hands out jobs and records how many each claim asked for."""

    def __init__(self, jobs: int) -> None:
        self.left, self.limits, self.lock = jobs, [], threading.Lock()

    def claim(self, owner: str, *, lease_seconds: int, limit: int) -> list[ClaimedJob]:
        with self.lock:
            self.limits.append(limit)
            taken = min(limit, self.left)
            self.left -= taken
            return [ClaimedJob(self.left + i, "u", f"o{self.left + i}", 0, owner, 0.0) for i in range(taken)]


def test_claims_wait_for_a_batch_of_free_slots(monkeypatch: Any) -> None:
    # given a worker running 16 jobs at once (claims of at least 2) and 40 due jobs that finish one by one
    repo = _Repo(40)
    deps = SyncDeps(repo=repo, saleor_for=lambda *_: None, klarna_for=lambda *_: None)  # type: ignore[arg-type]  # the loop only
    worker = Worker(deps, concurrency=16, poll_interval=0.01)
    done = threading.Semaphore(0)
    finished: list[str] = []

    def process(job: ClaimedJob) -> None:
        finished.append(job.order_id)
        done.release()

    monkeypatch.setattr(worker, "process", process)
    thread = worker.start_thread()
    # when every job has run
    for _ in range(40):
        assert done.acquire(timeout=10)
    worker.stop()
    thread.join(timeout=10)
    # then every job ran once, and no claim asked for fewer than 2 slots
    assert sorted(finished) == sorted(f"o{i}" for i in range(40))
    assert min(repo.limits) >= 2, repo.limits
