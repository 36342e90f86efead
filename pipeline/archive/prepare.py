"""Deciding about a run's manifest: the shard size when the user gives none, what the
manifest says for the closing lines, and which files changed since they were read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def summarise_manifest(frame: pd.DataFrame, labels: dict) -> dict[str, object]:
    """What the manifest says about refused rows and labels, for the CLI's closing lines:
    ``frame`` holds its label_name, model_label and manifest_error columns, ``labels`` the
    label-mapping report run.json recorded."""
    refused = frame["manifest_error"].dropna().value_counts().to_dict()
    labelled = frame["label_name"].notna()
    unmapped = frame.loc[labelled & frame["model_label"].isna(), "label_name"]
    return {"rows": len(frame), "refused": {str(k): int(v) for k, v in refused.items()},
            "labelled": int(labelled.sum()), "mapped": int(frame["model_label"].notna().sum()),
            "unmapped": len(unmapped),
            "unmapped_names": {str(k): int(v)
                               for k, v in unmapped.value_counts().head(10).items()},
            "label_mode": labels.get("mode")}


def changed_files(root: Path, images: Iterable[dict], missing: Iterable[dict]) -> set[str]:
    """Image ids whose file (below ``root``) differs in size or modification time from its
    ``images`` record, is gone, or, for a ``missing`` error row, exists now."""
    changed: set[str] = set()
    for record in images:
        try:
            stat = os.stat(root / record["path"])
        except OSError:
            changed.add(record["image_id"])
            continue
        if stat.st_size != record["bytes"] or stat.st_mtime_ns != record["mtime_ns"]:
            changed.add(record["image_id"])
    for record in missing:
        if record["path"] and (root / str(record["path"])).exists():
            changed.add(record["image_id"])
    return changed
