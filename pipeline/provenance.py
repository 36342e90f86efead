"""Which code wrote a result: the fidoflow version and, in a git checkout, its commit (run.json
and training.json record it)."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path


def code_version() -> str:
    """``0.1.0+abc1234`` in a checkout, the plain version in an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except OSError:
        sha = ""
    return f"{version('fidoflow')}+{sha}" if sha else version("fidoflow")
