"""The generated parts of the docs, from the declarations they describe: docs/settings.md (every
setting of a run and of a training) and the column tables of docs/tables.md (every run-folder
table, the metrics' columns included), between ``<!-- columns: NAME -->`` and
``<!-- /columns -->`` markers; the prose around them is written by hand.

``python -m fidoflow.flows.docs`` rewrites both; tests/test_docs.py fails when they are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pyarrow as pa

from fidoflow.pipeline.stages import metrics_table
from fidoflow.storage.tables import TABLES, Table

from .settings import settings_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"(<!-- columns: (\w+) -->\n).*?(<!-- /columns -->)", re.DOTALL)


def type_name(kind: pa.DataType) -> str:
    """An Arrow type as the docs write it (``list<int32>``, ``float32``)."""
    if pa.types.is_list(kind):
        return f"list<{type_name(kind.value_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ", ".join(f"{f.name}: {type_name(f.type)}" for f in kind) + ">"
    if pa.types.is_map(kind):
        return f"map<{type_name(kind.key_type)}, {type_name(kind.item_type)}>"
    return {"float": "float32", "double": "float64"}.get(str(kind), str(kind))


def column_table(table: Table) -> str:
    rows = ["| column | type | meaning |", "|---|---|---|"]
    rows += [f"| `{c.name}` | {type_name(c.type)} | {c.doc} |" for c in table.columns]
    return "\n".join(rows) + "\n"


def declared_tables() -> dict[str, Table]:
    """Every run-folder table as written, the metrics table with its metric columns."""
    return {t.name: (metrics_table() if t.name == "metrics" else t) for t in TABLES}


def tables_markdown(text: str) -> str:
    """docs/tables.md with every marked column table regenerated."""
    known = declared_tables()

    def fill(match: re.Match) -> str:
        return match.group(1) + column_table(known[match.group(2)]) + match.group(3)

    return BLOCK.sub(fill, text)


def generated() -> dict[Path, str]:
    """Each generated doc file and what it should hold."""
    tables_md = DOCS / "tables.md"
    return {DOCS / "settings.md": settings_markdown(),
            tables_md: tables_markdown(tables_md.read_text())}


def main() -> int:
    for path, text in generated().items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
