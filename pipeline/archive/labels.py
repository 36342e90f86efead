"""Mapping an archive's labels into a model's class space (the manifest's ``model_label``).

With a label map (CSV with a header: ``label_name,model_class``; ``model_class`` is a class
name of the model or its integer index, empty for "no class of the model"), every label name
the map lists is mapped; names it does not list are *unknown* and reported. Without a map,
labels map by exact class-name match when at least one name coincides; otherwise nothing is
mapped and accuracy is not computed.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODEL_COLUMNS = ("model_class", "model_label", "model_name")


@dataclass
class LabelMapping:
    """``model_label`` per row (None where unmapped) and what happened, for the run's report."""

    model_label: list[int | None]
    mode: str  # "label-map", "name-match" or "none"
    mapped: int = 0
    unlabelled: int = 0  # rows without a label name
    excluded: int = 0  # names the map sends to no class on purpose
    unknown: Counter = field(default_factory=Counter)  # label name -> rows

    def report(self, top: int = 20) -> dict[str, object]:
        return {"mode": self.mode, "mapped": self.mapped, "unlabelled": self.unlabelled,
                "excluded": self.excluded, "unknown": sum(self.unknown.values()),
                "unknown_names": dict(self.unknown.most_common(top))}


def read_label_map(path: str | Path, class_names: Sequence[str]) -> dict[str, int | None]:
    """``label_name -> model class index`` (None: no class) from a CSV; raises ValueError on
    names or indices the model does not have, and on contradicting lines."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            target = next((c for c in MODEL_COLUMNS if c in header), None)
            if "label_name" not in header or target is None:
                raise ValueError(f"label map {path} needs a header with label_name and "
                                 f"model_class; got {header}")
            lines = list(reader)
    except OSError as exc:
        raise ValueError(f"cannot read label map {path}: {exc}") from exc
    index = {name: i for i, name in enumerate(class_names)}
    mapping: dict[str, int | None] = {}
    bad: list[str] = []
    for number, line in enumerate(lines, 2):
        name, value = (line.get("label_name") or "").strip(), (line.get(target) or "").strip()
        if not name:
            continue
        if value == "":
            resolved = None
        elif value in index:
            resolved = index[value]
        elif value.lstrip("-").isdigit() and 0 <= int(value) < len(class_names):
            resolved = int(value)
        else:
            bad.append(f"line {number}: {value!r}")
            continue
        if name in mapping and mapping[name] != resolved:
            bad.append(f"line {number}: {name!r} mapped twice")
            continue
        mapping[name] = resolved
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"label map {path} names classes the model does not have "
                         f"({len(class_names)} classes): {shown}")
    return mapping


class LabelMapper:
    """Maps label names into the model's class space one row at a time, counting what happened.

    The mode is decided from the archive's distinct ``names``: a label map when one is given,
    else exact class-name match when at least one name coincides, else nothing maps."""

    def __init__(self, names: Iterable[str], class_names: Sequence[str],
                 label_map: dict[str, int | None] | None = None) -> None:
        index = {name: i for i, name in enumerate(class_names)}
        if label_map is not None:
            self.mode, self.table = "label-map", label_map
        elif any(n in index for n in names):
            self.mode, self.table = "name-match", index
        else:
            self.mode, self.table = "none", {}
        self.result = LabelMapping([], self.mode)

    def map(self, name: object) -> int | None:
        """The model-space label of one row's ``label_name`` (None: unmapped)."""
        out = self.result
        if name is None or name is _NA or (isinstance(name, float) and math.isnan(name)):
            out.unlabelled += 1
            return None
        name = str(name)
        if name in self.table:
            value = self.table[name]
            if value is None:
                out.excluded += 1
            else:
                out.mapped += 1
            return value
        if self.mode != "none":
            out.unknown[name] += 1
        return None

    def map_array(self, names: object) -> object:
        """``map`` over an Arrow string array at once (the manifest's batches): an int32 array,
        null where unmapped."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out = self.result
        out.unlabelled += names.null_count
        for entry in pc.value_counts(names).to_pylist():
            name, count = entry["values"], entry["counts"]
            if name is None:
                continue
            if name in self.table:
                if self.table[name] is None:
                    out.excluded += count
                else:
                    out.mapped += count
            elif self.mode != "none":
                out.unknown[name] += count
        if not self.table:
            return pa.nulls(len(names), pa.int32())
        keys = list(self.table)
        values = pa.array([self.table[key] for key in keys], pa.int32())
        return pc.take(values, pc.index_in(names, value_set=pa.array(keys, pa.string())))

    def report(self) -> dict[str, object]:
        return self.result.report()


def map_labels(label_names: Iterable[object], class_names: Sequence[str],
               label_map: dict[str, int | None] | None = None) -> LabelMapping:
    """The model-space label of each row's ``label_name``; never raises on unknown names."""
    names = [None if n is None or n is _NA or (isinstance(n, float) and math.isnan(n)) else str(n)
             for n in label_names]
    mapper = LabelMapper({n for n in names if n is not None}, class_names, label_map)
    mapper.result.model_label = [mapper.map(n) for n in names]
    return mapper.result


try:  # pandas' missing value, so frames can be passed as they are
    from pandas import NA as _NA
except ImportError:  # pragma: no cover
    _NA = object()
