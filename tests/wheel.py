"""fidoflow as users and cluster nodes get it: the wheel, built from a copy of the checkout,
and a fresh virtual environment outside the checkout that holds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(folder: Path) -> Path:
    """The wheel of the checkout, built in ``folder`` from a copy (setuptools leaves build/
    beside what it builds)."""
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "runs", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder), str(source)], check=True, capture_output=True)
    (wheel,) = folder.glob("fidoflow-*.whl")
    return wheel


def install_wheel(wheel: Path, venv: Path) -> Path:
    """A new venv at ``venv`` with ``wheel`` installed; returns its interpreter.

    The dependencies are this interpreter's, reached by a plain path line in a ``.pth`` file:
    Python runs no ``.pth`` file of a folder named that way, so the checkout's editable finder
    is not loaded and ``fidoflow`` can only come from the wheel (installing the 2 GB of
    dependencies afresh would take minutes of a 2-core machine for no other difference).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def module_names() -> set[str]:
    """Every module of the package as the checkout's files name it."""
    names = {"fidoflow"}
    for part in ("pipeline", "storage", "flows"):
        for path in (ROOT / part).rglob("*.py"):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            names.add("fidoflow." + dotted.removesuffix(".__init__"))
    return names
