"""Every user-facing failure is one `fidoflow: error:` line and a non-zero status, leaves no
temporary file and counts no shard done that is not: the full disk through the CLI as a user
runs it (a process of its own), the others through the same ``main`` in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

pytestmark = pytest.mark.slow

FAST = ["--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "1",
        "--model", "synthetic-cnn", "--explain-only"]


@pytest.fixture
def api_url(prefect_server: str) -> str:
    """The session's Prefect server (tests/conftest.py)."""
    return prefect_server


def fidoflow(api_url: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PREFECT_API_URL=api_url)
    return subprocess.run([sys.executable, "-m", "fidoflow.flows.cli", *argv], env=env, check=False,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    """``fidoflow ARGV`` in this process, with its status and what it printed."""
    from fidoflow.flows.cli import main

    def run(*argv: str) -> subprocess.CompletedProcess:
        code = main(list(argv))
        printed = capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), code, printed.out, printed.err)

    return run


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fidoflow: error: "), done.stderr
    return lines[0]


def no_temporary_files(root: Path) -> None:
    assert [p for p in root.rglob("*") if p.name.endswith(".tmp")] == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 256 KiB tmpfs with 40 KiB left: a real full disk part-way through a run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 40 * 1024))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_no_false_done_shard(api_url: str, photo_folder: Path,
                                                         small_disk: Path) -> None:
    run = small_disk / "run"
    line = one_error_line(fidoflow(api_url, "run", str(photo_folder), "--out", str(run), *FAST))
    assert "No space left on device" in line
    no_temporary_files(small_disk)
    for part in (run / "predictions").glob("part-*.parquet") if run.exists() else []:
        pq.read_table(part)  # a shard counted done has a whole part


def test_an_out_that_is_a_file(cli: Callable, photo_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file")
    line = one_error_line(cli("run", str(photo_folder),
                                   "--out", str(tmp_path / "run"), *FAST))
    assert "exists and is not a folder" in line


def test_an_unwritable_out(cli: Callable, photo_folder: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/fidoflow-run"  # even root cannot create folders there
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        target = str(tmp_path / "locked" / "run")
    line = one_error_line(cli("run", str(photo_folder), "--out", target, *FAST))
    assert target in line


def test_a_corrupt_model_never_suggests_unsafe_loading(cli: Callable, photo_folder: Path,
                                                       tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(4096))
    line = one_error_line(cli("run", str(photo_folder), "--out",
                                   str(tmp_path / "run"), *FAST[:-3], "--model", str(model)))
    assert "corrupt or no PyTorch file" in line and "weights_only" not in line
    assert not (tmp_path / "run").exists()


def test_a_bad_model_card(cli: Callable, photo_folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, model)
    (tmp_path / "model.yaml").write_text("architecture: [not, a, name]\nnum_classes: -1\n")
    line = one_error_line(cli("run", str(photo_folder), "--out",
                                   str(tmp_path / "run"), *FAST[:-3], "--model", str(model)))
    assert "model card" in line


def test_an_empty_source_says_so(cli: Callable, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = one_error_line(cli("run", str(tmp_path / "empty"), "--out",
                                   str(tmp_path / "run"), *FAST))
    assert "holds no images" in line and not (tmp_path / "run").exists()
