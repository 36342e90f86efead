"""The run's manifest rows from an archive: the reader's rows, labels mapped into the model's
classes, and each row's shard (the unit of resume)."""

from __future__ import annotations

import pandas as pd

from fidoflow.pipeline.archive.labels import map_labels, read_label_map
from fidoflow.pipeline.archive.readers import read_archive

LARGEST_AUTO_SHARD = 16


class EmptyArchive(ValueError):
    """The source has no image rows at all."""


def auto_shard_size(images: int, workers: int, largest: int = LARGEST_AUTO_SHARD) -> int:
    """Images per shard when the user does not say: the fewest rounds of at most ``largest``
    images per worker, split evenly, so every worker has a shard in every round (8 images on
    2 workers: 2 shards of 4; 48: 4 of 12; 256: 16 of 16)."""
    workers = max(workers, 1)
    rounds = -(-images // (workers * largest))
    return max(1, -(-images // (workers * rounds)))


def manifest_rows(source: str, format: str | None, split: str, images_root: str | None,
                  class_names: list[str], label_map: str | None, shard_size: int | None,
                  workers: int) -> tuple[pd.DataFrame, int, dict]:
    """The manifest rows (``model_label`` and ``shard`` filled), the shard size (chosen when
    None) and the label-mapping report. Raises on archive-level problems only."""
    mapping_file = read_label_map(label_map, class_names) if label_map else None
    frame = read_archive(source, format, split, images_root)
    if frame.empty:
        where = "" if split == "all" else f" in the {split} split"
        raise EmptyArchive(f"{source} holds no images{where} (folders are searched "
                           "recursively for image files); nothing to do")
    if shard_size is None:
        shard_size = auto_shard_size(len(frame), workers)
    mapping = map_labels(frame["label_name"], class_names, mapping_file)
    frame["model_label"] = pd.array(mapping.model_label, dtype="Int32")
    frame["shard"] = pd.array([i // shard_size for i in range(len(frame))], dtype="Int32")
    return frame, shard_size, mapping.report()


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
