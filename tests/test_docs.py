"""The generated docs are current: docs/settings.md from the settings declarations, the column
tables of docs/tables.md from the run-folder tables and the registered metrics
(``python -m fidoflow.flows.docs`` rewrites them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fidoflow.flows.docs import DOCS, declared_tables, generated


@pytest.mark.parametrize("name", ["settings.md", "tables.md"])
def test_generated_docs_are_current(name: str) -> None:
    path = DOCS / name
    assert path.read_text() == generated()[path], "run `python -m fidoflow.flows.docs`"


def test_every_table_has_its_column_table_in_the_docs() -> None:
    text = (DOCS / "tables.md").read_text()
    for name in declared_tables():
        assert f"<!-- columns: {name} -->" in text, name


def test_every_metric_column_is_a_column_of_the_metrics_table() -> None:
    from fidoflow.pipeline.metrics import columns

    table = declared_tables()["metrics"]
    names = [c.name for c in table.columns]
    assert names[:3] == ["image_id", "method", "target"]
    assert names[-3:] == ["seconds", "shard", "increment"]
    assert names[3:-3] == [c.name for c in columns()]


ROOT = Path(__file__).resolve().parents[1]
READ = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
TOP = ("pipeline/", "storage/", "flows/", "tests/", "bench/", "docs/", ".ci/")
ROOT_FILES = ("pyproject.toml", "setup.py", "prefect.yaml", "Makefile", "constraints.txt")


def named_paths(page: Path) -> list[tuple[str, Path]]:
    """Each relative link of ``page`` (anchors dropped) and each path of this repository it
    names in code spans (a path in a top folder, a file of the root, any ``NAME.md``): (as
    written, resolved)."""
    text = page.read_text()
    found = [(t, page.parent / t.split("#")[0]) for t in LINK.findall(text)
             if not t.startswith(("http://", "https://", "#", "mailto:"))]
    for span in CODE.findall(text):
        path = span.split("#")[0].split("::")[0].rstrip(".,;:")
        if any(c in path for c in "*<>$X{}") or "=" in path:
            continue  # a pattern, a placeholder or an option, not a path
        if path.startswith(TOP) or path in ROOT_FILES or ("/" not in path and path.endswith(".md")):
            found.append((span, ROOT / path))
    return found


@pytest.mark.parametrize("page", READ, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_path_the_docs_name_exists(page: Path) -> None:
    missing = [written for written, path in named_paths(page) if not path.exists()]
    assert not missing, f"{page.name} names what the repository lacks: {missing}"
