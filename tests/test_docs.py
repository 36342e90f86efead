"""The generated docs are current: docs/settings.md from the settings declarations, the column
tables of docs/tables.md from the run-folder tables and the registered metrics
(``python -m fidoflow.flows.docs`` rewrites them)."""

from __future__ import annotations

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
    assert names[:3] == ["image_id", "method", "target"] and names[-2:] == ["seconds", "shard"]
    assert names[3:-2] == [c.name for c in columns()]
