"""``klarna-om bench``: the benchmarks of BENCHMARKS.md, from a checkout or an installed copy.

The machinery (this package) drives the app against the fakes in ``plugin/testing``, like
``klarna-om demo``. ``--quick`` prints its table and writes nothing unless ``--output`` is given;
a full run writes BENCHMARKS.md (the checkout's, else one in the current folder) or ``--output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

PARTS = ("a", "b", "c", "d")
# The source checkout this package sits in, when it sits in one.
CHECKOUT = Path(__file__).resolve().parents[2]


def default_output() -> Path:
    """The checkout's BENCHMARKS.md, or BENCHMARKS.md in the current folder for an installed copy."""
    if (CHECKOUT / "pyproject.toml").exists() and (CHECKOUT / "BENCHMARKS.md").exists():
        return CHECKOUT / "BENCHMARKS.md"
    return Path.cwd() / "BENCHMARKS.md"


def parse_parts(only: str | None) -> tuple[str, ...]:
    """``--only a``, ``--only a,c`` or ``--only ac``; every part when empty."""
    if not only:
        return PARTS
    parts = tuple(p for p in PARTS if p in only.lower())
    unknown = set(only.lower()) - set(PARTS) - {",", " ", "|"}
    if not parts or unknown:
        raise click.BadParameter(f"expected some of {', '.join(PARTS)}, got {only!r}", param_hint="--only")
    return parts


def output_for(*, quick: bool, output: str | None) -> Path | None:
    """Where the report goes: ``--output``; nowhere for ``--quick``; else the default BENCHMARKS.md."""
    if output:
        return Path(output)
    return None if quick else default_output()


def run(
    *,
    quick: bool = False,
    only: str | None = None,
    output: str | None = None,
    burst: int | None = None,
    echo: Any = click.echo,
    **overrides: Any,
) -> Any:
    """Run the bench and print the table; write it where ``output_for`` says."""
    from plugin.benchmarks import harness

    target = output_for(quick=quick, output=output)
    cfg = harness.Config.make(quick=quick, parts=parse_parts(only), burst=burst, output=target, **overrides)
    return harness.run(cfg, echo=echo)
