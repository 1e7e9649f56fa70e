"""CPU time and peak memory of processes, read from Linux's /proc (no psutil).

CPU of a process tree = each live process's utime+stime plus cutime+cstime (the time of children
it has already reaped), so a gunicorn worker that was recycled mid-run still counts through its
master. Figures are in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """utime+stime (+cutime+cstime) of one process; 0.0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is state (field 3): utime is field 14, so index 11.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / TICK


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(pid: int) -> list[int]:
    """Live direct children (scans /proc; fine for a handful of calls per second)."""
    found = []
    for candidate in all_pids():
        if parent_of(candidate) == pid:
            found.append(candidate)
    return found


def tree(pid: int) -> list[int]:
    """The process and its live descendants."""
    result, todo = [], [pid]
    by_parent: dict[int, list[int]] = {}
    for candidate in all_pids():
        parent = parent_of(candidate)
        if parent is not None:
            by_parent.setdefault(parent, []).append(candidate)
    while todo:
        current = todo.pop()
        result.append(current)
        todo.extend(by_parent.get(current, ()))
    return result


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def status_kb(pid: int, key: str) -> int | None:
    """A ``Vm*`` line of /proc/<pid>/status in kB (VmHWM: peak resident set, VmRSS: now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def postgres_backends(dbname: str) -> list[int]:
    """Backends of a local PostgreSQL serving ``dbname`` (their title: ``postgres: … user db host``)."""
    marker = f" {dbname} "
    return [pid for pid in all_pids() if (line := cmdline(pid)).startswith("postgres:") and marker in line + " "]


@dataclass
class MachineCpu:
    """System-wide busy and total CPU time from /proc/stat, to see what else ran on the machine."""

    busy: float
    total: float

    @classmethod
    def read(cls) -> MachineCpu:
        with open("/proc/stat") as fh:
            parts = [int(x) for x in fh.readline().split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
        total = sum(parts[:8])  # guest time is already inside user/nice
        return cls(busy=(total - idle) / TICK, total=total / TICK)


def self_cpu() -> float:
    """This process (all threads), without reaped children."""
    return cpu_seconds(os.getpid(), children=False)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
