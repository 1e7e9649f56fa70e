"""The product works from a plain install: a wheel of this project in a fresh venv, run from another folder.

The wheel is built (pip, isolated build from the wheel cache) from a copy of the project without tests/ and installed without -e; the fresh venv
borrows only the third-party dependencies of the test venv (a path entry, no .pth of that venv runs,
so the editable install of the checkout stays invisible). Then ``klarna-om demo`` runs from an empty
folder and ``klarna-om bench --help`` answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PARTS = ("pyproject.toml", "README.md", "manifest.json", "plugin", "webhooks", "dashboard_ext", "migrations")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for part in PROJECT_PARTS:
        path = ROOT / part
        if path.is_dir():
            shutil.copytree(path, source / part, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(path, source / part)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
          str(source)], base, env)  # fmt: skip
    (wheel,) = wheels.glob("klarna_om_saleor-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    purelib = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base, env).strip()
    )
    # Dependencies only: a plain path entry, appended after the venv's own site-packages.
    (purelib / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
         base, env)  # fmt: skip
    return venv, env


def test_the_package_is_imported_from_the_install(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    where = _run([str(venv / "bin" / "python"), "-c", "import plugin, plugin.testing.saleor; print(plugin.__file__)"],
                 tmp_path, env)  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv)
    assert "--quick" in _run([str(venv / "bin" / "klarna-om"), "bench", "--help"], tmp_path, env)


def test_demo_runs_from_a_plain_install_in_any_folder(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    out = _run([str(venv / "bin" / "klarna-om"), "demo"], tmp_path, env)
    assert "Saleor installed the app: HTTP 200" in out
    assert "note: Klarna: captured" in out
    # Order #22's captured shipment is cancelled, then the order: refunded, and the rest released.
    assert "Klarna performed: {'captures': 3, 'refunds': 2, 'cancels': 0, 'releases': 1" in out
    assert list(tmp_path.iterdir()) == []  # the demo works in a temporary folder of its own
