"""The summary table: the vectorised bootstrap against a plain loop, and every section built from
hand-made re-classification, metric, error and timing rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fidoflow.pipeline.analysis.aggregate import (
    SUMMARY_COLUMNS,
    BootstrapConfig,
    bootstrap_ci,
    build_summary,
    class_key,
)
from fidoflow.storage import tables


def test_bootstrap_matches_a_plain_loop_and_is_deterministic() -> None:
    values = (np.random.default_rng(3).random(57) < 0.6).astype(float)
    cfg = BootstrapConfig(resamples=500, seed=11)
    mean, low, high, n = bootstrap_ci(values, cfg)
    idx = np.random.default_rng(11).integers(0, 57, size=(500, 57))  # same draws, one block
    means = values[idx].mean(axis=1)
    assert mean[0] == pytest.approx(values.mean()) and n[0] == 57
    assert low[0] == pytest.approx(np.quantile(means, 0.025))
    assert high[0] == pytest.approx(np.quantile(means, 0.975))
    assert bootstrap_ci(values, cfg)[1][0] == low[0]
    # blocks of a few resamples draw the same numbers in the same order
    small = bootstrap_ci(values, BootstrapConfig(resamples=500, seed=11, max_elements=200))
    assert small[1][0] == pytest.approx(low[0]) and small[2][0] == pytest.approx(high[0])


def test_bootstrap_columns_share_resamples_and_skip_missing_values() -> None:
    x = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, np.nan, 1.0])
    both = np.stack([x, x], axis=1)
    means, low, high, n = bootstrap_ci(both)
    assert n.tolist() == [7, 7] and means[0] == pytest.approx(5 / 7)
    assert low[0] == low[1] and high[0] == high[1]
    assert low[0] <= means[0] <= high[0]
    empty = bootstrap_ci(np.array([np.nan, np.nan]))
    assert np.isnan(empty[0][0]) and np.isnan(empty[1][0]) and empty[3][0] == 0
    one = bootstrap_ci(np.array([0.25]))
    assert (one[0][0], one[1][0], one[2][0]) == (0.25, 0.25, 0.25)


def test_interval_narrows_with_more_images() -> None:
    rng = np.random.default_rng(0)
    width = []
    for n in (50, 5000):
        _, low, high, _ = bootstrap_ci((rng.random(n) < 0.7).astype(float))
        width.append(high[0] - low[0])
    assert width[1] < width[0] / 5


def reclassified_rows() -> pd.DataFrame:
    """Six labelled images (classes a/b, splits s1/s2) and one without a label.

    baseline right on 0, 1, 2; crop right on 0, 1, 3, 4 (2 → wrong, 3 and 4 → right).
    """
    rows = []
    base_right = [1, 1, 1, 0, 0, 0]
    crop_right = [1, 1, 0, 1, 1, 0]
    for i in range(7):
        label = None if i == 6 else i % 2
        for method, variant, right in (("none", "global", base_right), ("scd", "crop", crop_right)):
            ok = None if label is None else bool(right[i])
            top1 = (label if ok else 5) if label is not None else (3 if variant == "crop" else 4)
            rows.append({"image_id": f"im{i}", "method": method, "variant": variant,
                         "top1": top1, "top1_name": f"c{top1}", "label_name": None if label is None
                         else "ab"[label], "model_label": label, "correct": ok,
                         "correct_top5": None if ok is None else True, "seconds": 0.5})
    return pd.DataFrame(rows)


def manifest_rows() -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"im{i}" for i in range(7)],
                         "split": ["s1", "s1", "s1", "s2", "s2", "s2", None]})


def metric_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"im{i}" for i in range(7)], "method": "scd",
        "deletion_auc": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4],
        "insertion_auc": [0.5] * 7,
        "pointing_hit": [True, False, True, True, None, None, None],
        "share_in_box": [0.5, 0.1, np.nan, 0.3, None, None, None],
        "box_iou": [0.5] * 4 + [None] * 3, "fdr": [0.1] * 4 + [None] * 3,
        "total_variation": [0.01] * 7, "seconds": [1.0] * 7,
    })


def summary() -> pd.DataFrame:
    errors = pd.DataFrame({"image_id": ["x", "y", "z"], "path": ["x", "y", "z"],
                           "stage": ["decode", "decode", "reclassify"],
                           "error_type": ["CorruptImage", "MissingFile", "CorruptImage"],
                           "message": ["", "", ""]})
    timings = pd.DataFrame({"stage": ["explain", "explain", "reclassify"],
                            "method": ["scd", "scd", None], "image_id": ["im0", "im1", "im0"],
                            "seconds": [2.0, 4.0, 1.0]})
    return build_summary(manifest_rows(), reclassified_rows(), metric_rows(), errors, timings,
                         BootstrapConfig(resamples=200))


def pick(frame: pd.DataFrame, **where: object) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy(dtype=bool)
    return frame[mask]


def test_summary_has_the_schema_columns_and_casts_to_the_arrow_schema() -> None:
    table = summary()
    assert tuple(table.columns) == SUMMARY_COLUMNS == tuple(tables.SUMMARY.schema.names)
    arrow = pa.Table.from_pandas(table, schema=tables.SUMMARY.schema, preserve_index=False)
    assert arrow.num_rows == len(table)


def test_accuracy_overall_per_class_and_per_split() -> None:
    table = pick(summary(), section="accuracy", statistic="top1")
    base = pick(table, group_by="overall", method="none").iloc[0]
    crop = pick(table, group_by="overall", method="scd", variant="crop").iloc[0]
    assert (base.value, base.n) == (pytest.approx(3 / 6), 6)  # the unlabelled image is left out
    assert (crop.value, crop.n) == (pytest.approx(4 / 6), 6)
    assert base.ci_low <= base.value <= base.ci_high
    per_class = pick(table, group_by="class", method="scd")
    assert dict(zip(per_class.group_value, per_class.value, strict=True)) == {
        "a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3)}
    per_split = pick(table, group_by="split", method="none")
    assert dict(zip(per_split.group_value, per_split.value, strict=True)) == {"s1": 1.0, "s2": 0.0}


def test_gain_is_paired_and_flips_are_counted() -> None:
    table = pick(summary(), section="accuracy_gain", group_by="overall", method="scd",
                 variant="crop")
    stats = table.set_index("statistic")
    assert stats.loc["top1_gain", "value"] == pytest.approx(1 / 6)
    assert stats.loc["top1_gain", "ci_low"] <= 1 / 6 <= stats.loc["top1_gain", "ci_high"]
    assert stats.loc["wrong_to_right", "value"] == 2 and stats.loc["right_to_wrong", "value"] == 1
    # every image counts for "changed", the unlabelled one too (top-1 4 -> 3)
    assert stats.loc["top1_changed", "n"] == 7
    assert stats.loc["top1_changed", "value"] == pytest.approx(4 / 7)


def test_metric_means_leave_missing_values_out() -> None:
    table = pick(summary(), section="metric", group_by="overall", method="scd").set_index(
        "statistic")
    assert table.loc["deletion_auc", "value"] == pytest.approx(1.6 / 7)
    assert table.loc["pointing_hit", "value"] == pytest.approx(3 / 4)
    assert table.loc["pointing_hit", "n"] == 4
    assert table.loc["share_in_box", "n"] == 3  # NaN (all-zero map) and nulls left out
    assert pd.isna(table.loc["deletion_auc", "variant"])


def test_errors_list_every_stage_and_timings_sum_per_stage() -> None:
    table = summary()
    errors = pick(table, section="errors", group_by="stage").set_index("group_value")["value"]
    assert errors.to_dict() == {"manifest": 0, "decode": 2, "reclassify": 1, "evaluate": 0}
    kinds = pick(table, section="errors", group_by="error_type").set_index("group_value")["value"]
    assert kinds["decode/CorruptImage"] == 1
    timing = pick(table, section="timing", group_value="explain").set_index("statistic")
    assert timing.loc["seconds_total", "value"] == 6.0
    assert timing.loc["seconds_per_image", "value"] == 3.0
    run = pick(table, section="run").set_index("statistic")["value"]
    assert run.to_dict() == {"images": 7, "classified": 7, "labelled": 6}


def test_class_key_prefers_names_and_falls_back_to_model_labels() -> None:
    frame = pd.DataFrame({"label_name": ["x", None, None],
                          "model_label": pd.array([1, 2, None], dtype="Int32")})
    assert class_key(frame).tolist()[:2] == ["x", "2"] and pd.isna(class_key(frame)[2])
