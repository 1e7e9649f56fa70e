"""Where a process's CPU goes: a sampling profiler weighted by each thread's own CPU time (Linux).

Every ``interval`` seconds a background thread reads each thread's CPU time (nanoseconds, from
``/proc/self/task/<tid>/schedstat``) and charges what a thread used since the last sample to the
stack it is in now: the function on top (self) and every function on the stack (inclusive), each
counted once per stack. Threads that wait (for Klarna, for the database, for work) use no CPU and
cost nothing in the profile, so it shows CPU, not waiting. The sampler's own thread is not counted.
The CPU of the last interval is charged where the thread is at the sample, so work that ends in a
wait (build a statement, send it, wait for the answer) shows partly under the waiting call: read
the inclusive column of the callers (which statement, which use-case step) rather than the leaf.

``python -m plugin.benchmarks.sampler OUT -- ARGS`` runs ``klarna-om ARGS`` under the sampler and
writes the profile to OUT (JSON) when the command ends, e.g. on SIGTERM (the bench's worker processes);
SIGUSR1 starts the profile afresh (the bench sends it once the workers have started).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

TICK = 1_000_000_000  # CPU is counted in nanoseconds


def _thread_ticks(tid: int) -> int | None:
    """Nanoseconds of CPU the thread has used (the first field of schedstat)."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_APP_PACKAGES = ("plugin", "webhooks", "dashboard_ext")


def _label(frame: FrameType) -> str:
    """``package/module.py:function``: the app's own code by its path in the project, libraries by
    their path in site-packages, the standard library by its module file."""
    code = frame.f_code
    parts = Path(code.co_filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    else:
        app = [i for i, part in enumerate(parts) if part in _APP_PACKAGES]
        parts = parts[app[-1] :] if app else parts[-1:]
    return f"{'/'.join(parts)}:{code.co_name}"


def is_app(label: str) -> bool:
    return label.startswith(tuple(f"{p}/" for p in _APP_PACKAGES)) and not label.startswith("plugin/benchmarks/")


class CpuSampler:
    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.inclusive: Counter[str] = Counter()
        self.exclusive: Counter[str] = Counter()
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._last: dict[int, int] = {}
        self._reset = False

    def reset(self) -> None:
        """Forget what was sampled so far (safe from a signal handler: the sampler thread clears)."""
        self._reset = True

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        """Charge the ticks each thread used since the last sample to its current stack."""
        if self._reset:
            self._reset = False
            self.inclusive.clear()
            self.exclusive.clear()
            self.total = 0
        me = threading.get_ident()
        natives = {t.ident: t.native_id for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            native = natives.get(ident)
            if ident == me or native is None:
                continue
            ticks = _thread_ticks(native)
            if ticks is None:
                continue
            used = ticks - self._last.get(native, ticks)
            self._last[native] = ticks
            if used <= 0:
                continue
            self.total += used
            self.exclusive[_label(frame)] += used
            seen: set[str] = set()
            current: FrameType | None = frame
            while current is not None:
                label = _label(current)
                if label not in seen:
                    seen.add(label)
                    self.inclusive[label] += used
                current = current.f_back

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def report(self) -> dict[str, Any]:
        return {
            "seconds": self.total / TICK,
            "inclusive": self.inclusive.most_common(60),
            "exclusive": self.exclusive.most_common(60),
        }


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' profiles as one."""
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    seconds = 0.0
    for report in reports:
        seconds += report["seconds"]
        inclusive.update(dict(report["inclusive"]))
        exclusive.update(dict(report["exclusive"]))
    ticks = seconds * TICK
    return {
        "seconds": seconds,
        "ticks": ticks,
        "inclusive": inclusive.most_common(),
        "exclusive": exclusive.most_common(),
    }


def render(report: dict[str, Any], *, per: int, top: int = 12) -> list[str]:
    """The app's functions by inclusive CPU (the function and what it calls), then the leaves overall."""
    ticks = report["ticks"] or 1
    out = ["| app function (file:name) | inclusive ms CPU per order | inclusive % | self ms CPU per order | self % |",
           "|---|---:|---:|---:|---:|"]  # fmt: skip
    own = dict(report["exclusive"])
    shown = [name for name, _ in report["inclusive"] if is_app(name)]
    for name in shown[:top]:
        inc = dict(report["inclusive"])[name]
        out.append(f"| `{name}` | {inc / TICK * 1000 / per:.2f} | {inc / ticks:.0%} | "
                   f"{own.get(name, 0) / TICK * 1000 / per:.2f} | {own.get(name, 0) / ticks:.0%} |")  # fmt: skip
    out.append("")
    out.append("Most self time (any code): " + ", ".join(
        f"`{name}` {count / ticks:.0%}" for name, count in report["exclusive"][:top]) + ".")  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    target, args = argv[1], argv[argv.index("--") + 1 :]
    sampler = CpuSampler().start()
    signal.signal(signal.SIGUSR1, lambda *_: sampler.reset())
    try:
        from plugin.cli import main as cli

        cli.main(args=args, prog_name="klarna-om", standalone_mode=False)
    finally:
        sampler.stop()
        tmp = target + ".tmp"
        Path(tmp).write_text(json.dumps(sampler.report()))
        os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
