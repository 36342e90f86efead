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


def manifest_warnings(report: dict[str, object]) -> list[str]:
    """``summarise_manifest``'s report as the warnings a finished run prints (never fatal):
    rows refused before decoding, labels the model's classes do not cover."""
    lines = []
    if report["refused"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report["refused"].items()))
        lines.append(f"warning: {sum(report['refused'].values())} manifest rows refused "
                     f"before decoding ({kinds}); see errors/")
    if report["labelled"] and report["label_mode"] == "none":
        lines.append("warning: no label name matches a model class, so accuracy cannot be "
                     "computed; give --label-map")
    elif report["unmapped"]:
        names = ", ".join(f"{k} ({v})" for k, v in report["unmapped_names"].items())
        lines.append(f"warning: {report['unmapped']} labelled images have labels the model's "
                     f"classes do not cover (model_label empty): {names}")
    return lines


def changed_files(root: Path, images: Iterable[dict], missing: Iterable[dict]) -> set[str]:
    """Image ids whose file (below ``root``) differs in size or modification time from its
    ``images`` record, or, for a ``missing`` error row, exists now. A file that is gone is no
    change: redoing its shard could only replace its explanation by an error (an increment
    records it removed instead)."""
    changed: set[str] = set()
    for record in images:
        try:
            stat = os.stat(root / record["path"])
        except OSError:
            continue
        if stat.st_size != record["bytes"] or stat.st_mtime_ns != record["mtime_ns"]:
            changed.add(record["image_id"])
    for record in missing:
        if record["path"] and (root / str(record["path"])).exists():
            changed.add(record["image_id"])
    return changed
