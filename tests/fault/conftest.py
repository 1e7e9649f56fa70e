"""The fault suite's counts (orders, Klarna calls, injected faults, kills, dropped connections,
captures, refunds, notes) at the end of the run, also without ``-s``."""

from __future__ import annotations

from typing import Any

from tests.fault.chaos import REPORTED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORTED:
        terminalreporter.section("fault suite: counts")
        for line in REPORTED:
            terminalreporter.write_line(line)
