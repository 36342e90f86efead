"""The package as installed and as read: one top-level import name, and the house rules of
CONTRIBUTING.md (pipeline/ and storage/ import neither Prefect nor Dask; nothing imports the folders
by their bare names, which would collide with other distributions' ``pipeline``)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.wheel import build_wheel, module_names

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("pipeline", "storage", "flows")
CODE = [p for d in (*PARTS, "tests", "bench") for p in (ROOT / d).rglob("*.py")]


def imported_modules(path: Path) -> list[str]:
    """Every absolute module name ``path`` imports (``import a.b``, ``from a.b import c``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_imports_the_folders_by_their_bare_names() -> None:
    bare = [f"{p.relative_to(ROOT)}: {name}" for p in CODE for name in imported_modules(p)
            if name.split(".")[0] in PARTS]
    assert not bare, "import fidoflow.<part>, not <part>: " + "; ".join(bare)


@pytest.mark.parametrize("part", ["pipeline", "storage"])
def test_the_domain_and_the_storage_import_neither_prefect_nor_dask(part: str) -> None:
    found = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / part).rglob("*.py")
             for name in imported_modules(p)
             if name.split(".")[0] in ("prefect", "prefect_dask", "dask", "distributed",
                                       "dask_cuda", "dask_jobqueue")]
    assert not found, "; ".join(found)


def test_storage_does_not_import_the_domain() -> None:
    found = [f"{p.relative_to(ROOT)}: {name}" for p in (ROOT / "storage").rglob("*.py")
             for name in imported_modules(p) if name.startswith(("fidoflow.pipeline",
                                                                 "fidoflow.flows"))]
    assert not found, "; ".join(found)


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"fidoflow"}
    info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(info).decode().split() == ["fidoflow"]
    for needed in ("fidoflow/__init__.py", "fidoflow/flows/cli.py",
                   "fidoflow/pipeline/data/imagenet_classes.txt",
                   "fidoflow/pipeline/data/synthetic_cnn.pt", "fidoflow/storage/runfolder.py"):
        assert needed in names
    assert not [n for n in names if n.startswith(("fidoflow/tests/", "fidoflow/bench/"))]
    assert "fidoflow/setup.py" not in names
    modules = {n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for n in names if n.endswith(".py")}
    assert modules == module_names()  # every module of the checkout, nothing else
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fidoflow = fidoflow.flows.cli:entry" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_installed_package_imports_from_anywhere(tmp_path: Path) -> None:
    """Outside the checkout (as a Dask worker or a deployment's worker runs), by module name."""
    code = ("import fidoflow.flows.explain_archive, fidoflow.pipeline.methods as m; "
            "print(len(m.KINDS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert int(out.stdout) >= 10


def test_the_console_script_prints_everything_and_exits_with_the_commands_status(
        tmp_path: Path) -> None:
    """``entry`` leaves without the interpreter's teardown: what it printed to a pipe (block
    buffered) still arrives whole, with main's exit status."""
    script = Path(sys.executable).with_name("fidoflow")
    listed = subprocess.run([script, "methods"], capture_output=True, text=True, check=False,
                            cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.rstrip().endswith("key=value:key=value")
    assert listed.stdout.count("defaults:") >= 10
    refused = subprocess.run([script, "methods", "--frobnicate"], capture_output=True,
                             text=True, check=False, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "--frobnicate" in refused.stderr
