"""The worker: claims sync-order jobs and runs them, several at once, each order by one worker only.

Jobs run in a thread pool so that Klarna calls for different orders overlap; the lease in the
``jobs`` row (not a thread lock) keeps one order to one worker across processes and hosts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

from plugin.domain.ledger import ClaimedJob
from plugin.metrics import JOB_RUNS
from plugin.services import housekeeping
from plugin.services.sync import LeaseLost, SyncDeps, backoff, fail_job, sync_order

__all__ = ["Worker", "backoff"]

logger = logging.getLogger(__name__)

HOUSEKEEPING_EVERY = 3600.0  # seconds between prunes (KLARNA_APP_RETENTION_DAYS sets what is old)


class Worker:
    def __init__(
        self,
        deps: SyncDeps,
        *,
        concurrency: int = 8,
        poll_interval: float = 0.5,
        retry_base: float | None = None,
        retention_days: float | None = None,
        prune: Callable[[timedelta], housekeeping.Pruned] | None = None,
    ) -> None:
        self.deps = deps if retry_base is None else replace(deps, retry_base=retry_base)
        self.retention = timedelta(days=retention_days) if retention_days and prune else None
        self._prune = prune
        self._next_housekeeping = 0.0
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.retry_base = self.deps.retry_base
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def claim(self, limit: int) -> list[ClaimedJob]:
        return self.deps.repo.claim(self.owner, lease_seconds=self.deps.lease_seconds, limit=limit)

    def process(self, job: ClaimedJob) -> None:
        """Run one job; the use case records what happens next. Never raises (but for a kill)."""
        try:
            try:
                outcome = sync_order(self.deps, job)
            except LeaseLost:
                raise
            except Exception as exc:
                logger.exception("sync failed", extra={"order_id": job.order_id, "saleor_api_url": job.saleor_api_url})
                JOB_RUNS.labels("error").inc()
                outcome = fail_job(self.deps, job, f"{exc.__class__.__name__}: {exc}")
        except LeaseLost:
            JOB_RUNS.labels("lease_lost").inc()
            logger.warning("lease lost; another worker has the order", extra={"order_id": job.order_id})
            return
        except Exception:
            JOB_RUNS.labels("error").inc()
            logger.exception("recording the run failed", extra={"order_id": job.order_id})
            return  # the lease runs out and another run takes the job
        JOB_RUNS.labels("failed" if outcome.gave_up else "retry" if outcome.retry_in is not None else "done").inc()

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Process due jobs in this thread until none is due (tests, the demo). Returns jobs run."""
        done = 0
        for _ in range(max_rounds):
            jobs = self.claim(self.concurrency)
            if not jobs:
                return done
            for job in jobs:
                self.process(job)
                done += 1
        return done

    def housekeep(self, *, now: float | None = None) -> housekeeping.Pruned | None:
        """Prune old deliveries and idle jobs when due (at start, then hourly); never raises."""
        now = time.monotonic() if now is None else now
        if self.retention is None or self._prune is None or now < self._next_housekeeping:
            return None
        self._next_housekeeping = now + HOUSEKEEPING_EVERY
        try:
            pruned = self._prune(self.retention)
        except Exception:
            logger.warning("housekeeping failed; next try in an hour", exc_info=True)
            return None
        if pruned.deliveries or pruned.jobs:
            logger.info("housekeeping", extra={"deliveries_pruned": pruned.deliveries, "jobs_pruned": pruned.jobs})
        return pruned

    def run(self) -> None:
        """Poll and process until :meth:`stop`; in-flight jobs finish before returning."""
        busy: set[Future[None]] = set()
        lock = threading.Lock()
        # Claims batch: while jobs run, a claim waits until this many slots are free (one claim
        # transaction for several jobs instead of one per finished job).
        batch = max(1, self.concurrency // 8)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="klarna-om-job") as pool:
            while not self._stop.is_set():
                self.housekeep()
                with lock:
                    free = self.concurrency - len(busy)
                try:
                    jobs = self.claim(free) if free >= batch or free == self.concurrency else []
                except Exception:
                    logger.warning("claiming jobs failed; retrying", exc_info=True)
                    jobs = []
                for job in jobs:
                    future = pool.submit(self.process, job)
                    with lock:
                        busy.add(future)

                    def _done(f: Future[None]) -> None:
                        with lock:
                            busy.discard(f)
                        self._wake.set()

                    future.add_done_callback(_done)
                if not jobs:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="klarna-om-worker", daemon=True)
        thread.start()
        return thread
