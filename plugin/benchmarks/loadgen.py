"""The load generator: N concurrent senders POSTing pre-built requests over keep-alive connections.

Run as its own process (``python -m plugin.benchmarks.loadgen IN OUT``) so that its interpreter lock is
not the app's or the fakes'. It forks ``processes`` children with ``senders / processes`` threads
each; every thread holds one ``http.client`` keep-alive connection and takes the next request from
a shared counter, so slow and fast senders share the work. Each request is recorded as
``(index, start, end, status)`` with ``time.monotonic()`` (system-wide on Linux, so the harness
can compare it with its own clock).

IN is a pickle ``{"host", "port", "path", "requests": [(headers, body)], "senders", "processes"}``;
OUT receives ``{"records": [...], "cpu": seconds of CPU used by the senders, "errors": [...]}``.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import pickle
import resource
import sys
import threading
import time
from typing import Any


def _sender(job: dict[str, Any], counter: Any, records: list[tuple[int, float, float, int]], errors: list[str]) -> None:
    conn: http.client.HTTPConnection | None = None
    requests = job["requests"]
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        if index >= len(requests):
            break
        headers, body = requests[index]
        for attempt in (1, 2):  # one reconnect: keep-alive closed by the server (recycled worker)
            if conn is None:
                conn = http.client.HTTPConnection(job["host"], job["port"], timeout=60)
            start = time.monotonic()
            try:
                conn.request("POST", job["path"], body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                status = 0
                if attempt == 2:
                    errors.append(f"{index}: {exc.__class__.__name__}: {exc}")
        records.append((index, start, time.monotonic(), status))
    if conn is not None:
        conn.close()


def _child(job: dict[str, Any], counter: Any, threads: int, start_at: float, out: Any) -> None:
    records: list[tuple[int, float, float, int]] = []
    errors: list[str] = []
    workers = [threading.Thread(target=_sender, args=(job, counter, records, errors)) for _ in range(threads)]
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((records, errors, usage.ru_utime + usage.ru_stime))


def run(job: dict[str, Any]) -> dict[str, Any]:
    senders, processes = int(job["senders"]), max(1, int(job.get("processes", 1)))
    processes = min(processes, senders)
    ctx = mp.get_context("fork")  # this process has no threads yet: forking is safe
    counter = ctx.Value("l", 0)
    out = ctx.Queue()
    start_at = time.monotonic() + 0.3
    per = [senders // processes + (1 if i < senders % processes else 0) for i in range(processes)]
    children = [ctx.Process(target=_child, args=(job, counter, n, start_at, out)) for n in per]
    for child in children:
        child.start()
    records: list[tuple[int, float, float, int]] = []
    errors: list[str] = []
    cpu = 0.0
    for _ in children:
        r, e, c = out.get()
        records += r
        errors += e
        cpu += c
    for child in children:
        child.join()
    records.sort()
    return {"records": records, "errors": errors, "cpu": cpu}


def main(argv: list[str]) -> int:
    source, target = argv[1], argv[2]
    with open(source, "rb") as fh:
        job = pickle.load(fh)
    result = run(job)
    tmp = target + ".tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(result, fh)
    os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
