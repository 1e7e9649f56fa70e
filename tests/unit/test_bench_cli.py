"""``klarna-om bench`` options: where the report goes, which parts run."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from plugin.benchmarks.cli import default_output, output_for, parse_parts


def test_quick_writes_no_file_unless_asked() -> None:
    assert output_for(quick=True, output=None) is None
    assert output_for(quick=True, output="quick.md") == Path("quick.md")


def test_a_full_run_writes_the_checkouts_benchmarks_or_the_asked_file() -> None:
    assert output_for(quick=False, output=None) == default_output()
    assert default_output().name == "BENCHMARKS.md"
    assert output_for(quick=False, output="x.md") == Path("x.md")


def test_parts() -> None:
    assert parse_parts(None) == ("a", "b", "c", "d")
    assert parse_parts("a,c") == ("a", "c")
    assert parse_parts("D") == ("d",)
    with pytest.raises(click.BadParameter):
        parse_parts("a,x")
