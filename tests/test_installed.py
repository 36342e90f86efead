"""The installed wheel, outside the checkout, as users and cluster nodes have it: every module
imports, ``fidoflow run`` runs from another folder, and Dask workers whose only fidoflow is
the wheel run a ``--dask-address`` run whose folder lands where the command said."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fidoflow.storage import parts, tables
from fidoflow.storage.runfolder import RunFolder
from tests.test_dask_address import FAST, dask_cluster
from tests.wheel import ROOT, build_wheel, install_wheel, module_names

pytestmark = pytest.mark.slow

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import fidoflow
names = ["fidoflow"] + [m.name for m in pkgutil.walk_packages(fidoflow.__path__, "fidoflow.")]
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
files = {name: sys.modules[name].__file__ for name in names if name in sys.modules}
print(json.dumps({"names": names, "failed": failed, "files": files, "path": sys.path}))
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, outside the checkout, holding the wheel; returns its interpreter."""
    folder = tmp_path_factory.mktemp("installed")
    return install_wheel(build_wheel(folder), folder / "venv")


def test_every_module_of_the_installed_wheel_imports(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([venv, "-c", IMPORT_ALL], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=300)
    found = json.loads(out.stdout)
    assert found["failed"] == {}
    assert set(found["names"]) == module_names()
    where = venv.parents[1]
    assert all(Path(f).is_relative_to(where) for f in found["files"].values()), found["files"]
    assert str(ROOT) not in found["path"] and "" not in found["path"][1:]


PACKAGED = """
import importlib, json, sys, yaml
from prefect.flows import Flow
from fidoflow.pipeline.models.loading import load_efficientnet_lite0, load_synthetic_cnn
spec = yaml.safe_load(open(sys.argv[1]))
flows = {}
for deployment in spec["deployments"]:
    module, name = deployment["entrypoint"].split(":")
    flows[deployment["name"]] = isinstance(getattr(importlib.import_module(module), name), Flow)
lite0, synthetic = load_efficientnet_lite0(), load_synthetic_cnn()
print(json.dumps({"flows": flows, "classes": len(lite0.class_names),
                  "first": lite0.class_names[0], "synthetic": len(synthetic.class_names)}))
"""


def test_the_installed_wheel_holds_its_data_and_the_deployments_entrypoints(
        venv: Path, tmp_path: Path) -> None:
    """The bundled class names and weights load, and every prefect.yaml entrypoint is a flow of
    the installed package (what a work pool's image with only the wheel runs)."""
    out = subprocess.run([venv, "-c", PACKAGED, str(ROOT / "prefect.yaml")], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=300)
    found = json.loads(out.stdout)
    assert found["flows"] and all(found["flows"].values()), found["flows"]
    assert found["classes"] == 1000 and found["first"].startswith("tench")
    assert found["synthetic"] >= 2


def fidoflow(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([venv.with_name("fidoflow"), *argv], cwd=cwd, capture_output=True,
                          text=True, check=False, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_the_installed_console_script_runs_a_run_from_another_folder(
        venv: Path, photo_folder: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    done = fidoflow(venv, "run", str(photo_folder), "--out", "mine", *FAST, cwd=user)
    assert f"run folder: {user / 'mine'}" in done.stdout
    assert parts.done_shards(RunFolder(str(user / "mine")), tables.PREDICTIONS) == {0, 1}


def test_workers_that_hold_only_the_wheel_write_where_the_command_said(
        venv: Path, photo_folder: Path, tmp_path: Path) -> None:
    """A relative --out is made absolute before any task runs: the workers, started in another
    folder, write there, not under their own working directory."""
    user, nodes = tmp_path / "user", tmp_path / "nodes"
    user.mkdir()
    nodes.mkdir()
    with dask_cluster(python=str(venv), cwd=nodes) as address:
        done = fidoflow(venv, "run", str(photo_folder), "--out", "run-remote", *FAST,
                        "--dask-address", address, cwd=user)
    assert "2 of 2 shards run, 3 images, 0 errors" in done.stdout
    assert parts.done_shards(RunFolder(str(user / "run-remote")), tables.PREDICTIONS) == {0, 1}
    assert list(nodes.iterdir()) == []
