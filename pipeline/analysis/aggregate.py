"""Aggregates of a run: accuracies, gains, metric means with bootstrap CIs, errors, timings.

Everything lands in one tidy long table (``SUMMARY_COLUMNS``; docs/tables.md):
one row per (section, group_by, group_value, method, variant, statistic) with its value, the bounds of
its 95 % confidence interval where one is meaningful, and the number of images behind it.

Confidence intervals are percentile bootstraps over images: ``resamples`` resamples of the
images with replacement, all drawn at once (numpy, vectorised, fixed seed). Statistics compared
on the same images (a variant against the baseline) are bootstrapped *paired*: the per-image
difference is resampled, so the interval is that of the gain, not of two separate accuracies.
Pure pandas/numpy: the caller reads and writes the tables.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fidoflow.pipeline.analysis.records import BASELINE_METHOD, BASELINE_VARIANT
from fidoflow.pipeline.metrics import columns

SUMMARY_COLUMNS = ("section", "group_by", "group_value", "method", "variant", "statistic",
                   "value", "ci_low", "ci_high", "n")
OVERALL = "overall"
ALL = "all"


@dataclass(frozen=True)
class BootstrapConfig:
    """Percentile bootstrap: ``resamples`` draws, ``confidence`` level, fixed ``seed``;
    ``max_elements`` caps the size of one vectorised block of resampled values."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    max_elements: int = 1 << 22


def bootstrap_ci(values: np.ndarray | Sequence[float], config: BootstrapConfig = BootstrapConfig()
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Means, CI lows, CI highs and counts of the columns of ``values`` (n,) or (n, m).

    NaN marks a missing value: each column's mean and resampled means ignore its NaNs. All
    columns share the resampled image indices (paired), drawn from ``seed`` alone, so the same
    n always gives the same resamples. A column with no value gets NaN; one value, a zero-width
    interval.
    """
    arr = np.asarray(values, dtype=np.float64)
    squeeze = arr.ndim == 1
    arr = arr.reshape(len(arr), 1 if squeeze else arr.shape[1])
    n, m = arr.shape
    valid = ~np.isnan(arr)
    filled = np.where(valid, arr, 0.0)
    counts = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = filled.sum(axis=0) / counts
    low = np.full(m, np.nan)
    high = np.full(m, np.nan)
    if n > 0 and config.resamples > 0:
        rng = np.random.default_rng(config.seed)
        block = max(1, config.max_elements // max(n, 1))
        sampled = []
        for start in range(0, config.resamples, block):
            rows = min(block, config.resamples - start)
            idx = rng.integers(0, n, size=(rows, n))
            # how often each image is drawn in each resample, then sums as one matrix product
            drawn = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(),
                                minlength=rows * n).reshape(rows, n).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                sampled.append((drawn @ filled) / (drawn @ valid.astype(np.float64)))
        boot = np.concatenate(sampled)  # (resamples, m), NaN where a resample has no value
        alpha = (1.0 - config.confidence) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            low, high = np.nanquantile(boot, [alpha, 1 - alpha], axis=0)
    if squeeze:
        return means[:1], low[:1], high[:1], counts[:1]
    return means, low, high, counts


def _row(section: str, group_by: str, group: str, method: str | None, variant: str | None,
         statistic: str, value: float, low: float | None = None, high: float | None = None,
         n: int = 0) -> dict[str, object]:
    def number(x: float | None) -> float | None:
        return None if x is None or not np.isfinite(x) else float(x)

    return {"section": section, "group_by": group_by, "group_value": group, "method": method,
            "variant": variant, "statistic": statistic, "value": number(value),
            "ci_low": number(low), "ci_high": number(high), "n": int(n)}


def _groupings(frame: pd.DataFrame, by: Iterable[str]) -> Iterable[tuple[str, str, pd.DataFrame]]:
    """(group_by, group, rows): everything, then each value of each grouping column present."""
    yield OVERALL, ALL, frame
    for column in by:
        if column not in frame or frame[column].isna().all():
            continue
        for value, rows in frame.groupby(column, dropna=True, sort=True):
            yield column, str(value), rows


def class_key(frame: pd.DataFrame) -> pd.Series:
    """The class an image belongs to: ``label_name``, else the model-space label as text."""
    names = frame["label_name"] if "label_name" in frame else pd.Series(None, index=frame.index)
    labels = frame["model_label"] if "model_label" in frame else pd.Series(None, index=frame.index)
    text = labels.astype("Int64").astype("string")
    return names.astype("string").fillna(text)


def accuracy_rows(reclassified: pd.DataFrame, config: BootstrapConfig = BootstrapConfig(),
                  by: Sequence[str] = ("class", "split", "increment")
                  ) -> list[dict[str, object]]:
    """Top-1/top-5 accuracy of every (method, variant), the baseline included, overall and per
    group, over the images with a label in the model's class space (``correct`` not null)."""
    rows: list[dict[str, object]] = []
    labelled = reclassified[reclassified["correct"].notna()]
    for group_by, group, part in _groupings(labelled, by):
        for (method, variant), cell in part.groupby(["method", "variant"], sort=True):
            values = np.stack([cell["correct"].astype(float).to_numpy(),
                               cell["correct_top5"].astype(float).to_numpy()], axis=1)
            means, low, high, counts = bootstrap_ci(values, config)
            for j, statistic in enumerate(("top1", "top5")):
                rows.append(_row("accuracy", group_by, group, method, variant, statistic,
                                 means[j], low[j], high[j], counts[j]))
    return rows


def _paired(reclassified: pd.DataFrame) -> pd.DataFrame:
    """Each (method, variant) row joined with its image's baseline row."""
    base = reclassified[(reclassified["method"] == BASELINE_METHOD)
                        & (reclassified["variant"] == BASELINE_VARIANT)]
    base = base[["image_id", "top1", "correct", "correct_top5"]].rename(
        columns={"top1": "base_top1", "correct": "base_correct",
                 "correct_top5": "base_correct_top5"})
    others = reclassified[reclassified["method"] != BASELINE_METHOD]
    return others.merge(base, on="image_id", how="inner")


def gain_rows(reclassified: pd.DataFrame, config: BootstrapConfig = BootstrapConfig(),
              by: Sequence[str] = ("split",)) -> list[dict[str, object]]:
    """Per (method, variant) against the baseline on the same images: top-1/top-5 gains with
    paired bootstrap CIs, the counts of right→wrong and wrong→right flips (labelled images),
    and the share of images whose top-1 changed at all (every image, labelled or not)."""
    rows: list[dict[str, object]] = []
    paired = _paired(reclassified)
    for group_by, group, part in _groupings(paired, by):
        for (method, variant), cell in part.groupby(["method", "variant"], sort=True):
            changed = (cell["top1"] != cell["base_top1"]).astype(float).to_numpy()
            mean, low, high, count = bootstrap_ci(changed, config)
            rows.append(_row("accuracy_gain", group_by, group, method, variant, "top1_changed",
                             mean[0], low[0], high[0], count[0]))
            labelled = cell[cell["correct"].notna() & cell["base_correct"].notna()]
            if labelled.empty:
                continue
            now = labelled["correct"].astype(float).to_numpy()
            before = labelled["base_correct"].astype(float).to_numpy()
            now5 = labelled["correct_top5"].astype(float).to_numpy()
            before5 = labelled["base_correct_top5"].astype(float).to_numpy()
            means, low, high, counts = bootstrap_ci(np.stack([now - before, now5 - before5], 1),
                                                    config)
            for j, statistic in enumerate(("top1_gain", "top5_gain")):
                rows.append(_row("accuracy_gain", group_by, group, method, variant, statistic,
                                 means[j], low[j], high[j], counts[j]))
            n = len(labelled)
            rows.append(_row("accuracy_gain", group_by, group, method, variant, "right_to_wrong",
                             float(((before == 1) & (now == 0)).sum()), n=n))
            rows.append(_row("accuracy_gain", group_by, group, method, variant, "wrong_to_right",
                             float(((before == 0) & (now == 1)).sum()), n=n))
    return rows


def metric_rows(metrics: pd.DataFrame, config: BootstrapConfig = BootstrapConfig(),
                by: Sequence[str] = ("split",)) -> list[dict[str, object]]:
    """Mean of every mask metric per method with its CI (NaN/null values left out, e.g. box
    metrics of images without a box), overall and per group."""
    rows: list[dict[str, object]] = []
    present = [c.name for c in columns(lambda c: c.summarised) if c.name in metrics]
    for group_by, group, part in _groupings(metrics, by):
        for method, cell in part.groupby("method", sort=True):
            values = np.stack([pd.to_numeric(cell[c].astype("Float64"), errors="coerce")
                               .astype(float).to_numpy() for c in present], axis=1)
            means, low, high, counts = bootstrap_ci(values, config)
            for j, statistic in enumerate(present):
                if counts[j] == 0:
                    continue
                rows.append(_row("metric", group_by, group, method, None, statistic,
                                 means[j], low[j], high[j], counts[j]))
    return rows


def part_rows(parts: pd.DataFrame, config: BootstrapConfig = BootstrapConfig(),
              by: Sequence[str] = ("class",)) -> list[dict[str, object]]:
    """Mean share of each method's map near each part (``parts`` table), overall and per
    class, with CIs over the images that show the part: which parts a model uses for a
    species ("for Laysan Albatross, SCD puts 0.41 of its mass near the beak")."""
    rows: list[dict[str, object]] = []
    if parts.empty:
        return rows
    for group_by, group, cell in _groupings(parts, by):
        for (method, part), values in cell.groupby(["method", "part"], sort=True):
            share = pd.to_numeric(values["share"], errors="coerce").to_numpy(dtype=float)
            mean, low, high, count = bootstrap_ci(share, config)
            rows.append(_row("parts", group_by, group, method, None, str(part), mean[0],
                             low[0], high[0], count[0]))
    return rows


def error_rows(errors: pd.DataFrame, images: int,
               stages: Sequence[str] = ("manifest", "decode", "reclassify", "evaluate")
               ) -> list[dict[str, object]]:
    """Error counts per stage (every listed stage, zeros included) and per error type; ``n`` is
    the number of images of the run."""
    rows = []
    counts = errors["stage"].value_counts() if len(errors) else pd.Series(dtype=int)
    for stage in list(stages) + sorted(set(counts.index) - set(stages)):
        rows.append(_row("errors", "stage", str(stage), None, None, "errors",
                         float(counts.get(stage, 0)), n=images))
    if len(errors):
        for (stage, kind), count in errors.groupby(["stage", "error_type"]).size().items():
            rows.append(_row("errors", "error_type", f"{stage}/{kind}", None, None, "errors",
                             float(count), n=images))
    return rows


def timing_rows(timings: pd.DataFrame) -> list[dict[str, object]]:
    """Compute seconds per stage (and method where a stage has several): total and per image.
    ``timings`` has columns stage, method, image_id, seconds (one row per timed item)."""
    rows = []
    if timings.empty:
        return rows
    frame = timings.assign(method=timings["method"].fillna(""))
    for (stage, method), cell in frame.groupby(["stage", "method"], sort=False):
        images = int(cell["image_id"].nunique())
        total = float(cell["seconds"].sum())
        method = method or None
        rows.append(_row("timing", "stage", str(stage), method, None, "seconds_total", total,
                         n=images))
        rows.append(_row("timing", "stage", str(stage), method, None, "seconds_per_image",
                         total / images if images else float("nan"), n=images))
    return rows


def run_rows(manifest: pd.DataFrame, reclassified: pd.DataFrame) -> list[dict[str, object]]:
    """How many images the run holds, how many were classified, how many carry a label."""
    base = reclassified[(reclassified["method"] == BASELINE_METHOD)]
    labelled = int(base["correct"].notna().sum()) if len(base) else 0
    return [
        _row("run", OVERALL, ALL, None, None, "images", float(len(manifest)), n=len(manifest)),
        _row("run", OVERALL, ALL, None, None, "classified", float(len(base)), n=len(manifest)),
        _row("run", OVERALL, ALL, None, None, "labelled", float(labelled), n=len(manifest)),
    ]


def increment_rows(manifest: pd.DataFrame, errors: pd.DataFrame) -> list[dict[str, object]]:
    """Per increment of the folder (the run that listed an image first): its images and how
    many of them any stage could not use."""
    if "increment" not in manifest or manifest["increment"].isna().all():
        return []
    failed = set(errors["image_id"]) if len(errors) else set()
    rows = []
    for number, images in manifest.groupby("increment", sort=True):
        group = str(int(number))
        rows.append(_row("run", "increment", group, None, None, "images", float(len(images)),
                         n=len(images)))
        rows.append(_row("run", "increment", group, None, None, "errors",
                         float(images["image_id"].isin(failed).sum()), n=len(images)))
    return rows


def with_groups(frame: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (rows keyed by image_id) with the manifest's ``split``, the ``increment`` that
    listed the image and a ``class`` key."""
    extra = manifest[["image_id"]].copy()
    extra["split"] = manifest.get("split")
    if "increment" in manifest:
        extra["increment"] = manifest["increment"].astype("Int64").astype("string")
    out = frame.merge(extra, on="image_id", how="left", suffixes=("", "_manifest"))
    if "label_name" in frame or "model_label" in frame:
        out["class"] = class_key(out)
    return out


def build_summary(manifest: pd.DataFrame, reclassified: pd.DataFrame, metrics: pd.DataFrame,
                  errors: pd.DataFrame, timings: pd.DataFrame,
                  config: BootstrapConfig = BootstrapConfig(),
                  parts: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary table (``SUMMARY_COLUMNS``) of a run from its tables as DataFrames."""
    reclassified = with_groups(reclassified, manifest)
    metrics = with_groups(metrics, manifest)
    if parts is not None and len(parts):  # the class of each image, from the manifest
        labels = [c for c in ("image_id", "label_name", "model_label") if c in manifest]
        parts = with_groups(parts.merge(manifest[labels], on="image_id", how="left"), manifest)
    else:
        parts = pd.DataFrame()
    rows = (run_rows(manifest, reclassified) + increment_rows(manifest, errors)
            + accuracy_rows(reclassified, config)
            + gain_rows(reclassified, config) + metric_rows(metrics, config)
            + part_rows(parts, config)
            + error_rows(errors, len(manifest)) + timing_rows(timings))
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = frame[column].astype("float64")
    frame["n"] = frame["n"].astype("int64")
    return frame


TIMING_COLUMNS = ["stage", "method", "image_id", "seconds"]


def timings_of(predictions: pd.DataFrame, reclassified: pd.DataFrame,
               metrics: pd.DataFrame) -> pd.DataFrame:
    """Seconds per image of each stage (and method, where the stage has one), one table."""
    frames = [
        predictions.assign(stage="explain")[TIMING_COLUMNS],
        reclassified.assign(stage="reclassify", method=None)[TIMING_COLUMNS],
        metrics.assign(stage="evaluate")[TIMING_COLUMNS],
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=TIMING_COLUMNS)
    return pd.concat(frames, ignore_index=True)
