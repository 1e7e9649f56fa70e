"""``klarna-om bench``: the benchmarks of BENCHMARKS.md, from a source checkout.

The machinery lives in ``benchmarks/`` at the repository root and drives the app against the fakes
in ``plugin/testing`` (like ``klarna-om demo``), so the repository root goes onto ``sys.path`` first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("a", "b", "c")


def _checkout() -> None:
    if not (ROOT / "benchmarks" / "harness.py").exists() or not (ROOT / "plugin" / "testing" / "saleor.py").exists():
        raise click.ClickException("the bench needs a source checkout (it uses benchmarks/ and plugin/testing)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def parse_parts(only: str | None) -> tuple[str, ...]:
    """``--only a``, ``--only a,c`` or ``--only ac``; every part when empty."""
    if not only:
        return PARTS
    parts = tuple(p for p in PARTS if p in only.lower())
    unknown = set(only.lower()) - set(PARTS) - {",", " ", "|"}
    if not parts or unknown:
        raise click.BadParameter(f"expected some of a, b, c, got {only!r}", param_hint="--only")
    return parts


def run(
    *,
    quick: bool = False,
    only: str | None = None,
    output: str | None = None,
    burst: int | None = None,
    echo: Any = click.echo,
    **overrides: Any,
) -> Any:
    """Run the bench, print the table, write it to ``output`` (default BENCHMARKS.md at the root)."""
    _checkout()
    from benchmarks import harness

    target = Path(output) if output else ROOT / "BENCHMARKS.md"
    cfg = harness.Config.make(quick=quick, parts=parse_parts(only), burst=burst, output=target, **overrides)
    return harness.run(cfg, echo=echo)
