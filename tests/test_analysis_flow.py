"""The analysis stages wired to a run folder: re-classify, evaluate, aggregate, report.

A labelled run on the synthetic birds (stage functions called directly, the small CNN, a few
seconds) checks the tables' contents and the README's pandas and DuckDB examples; one `fidoflow
run` through the CLI, Prefect and Dask (tiny settings) checks the wiring, the artifacts and the
report in a real browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fidoflow.pipeline import stages
from fidoflow.pipeline.analysis.aggregate import BootstrapConfig
from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
from fidoflow.pipeline.archive.synthetic import write_archive
from fidoflow.pipeline.config import DEFAULT_ANALYSIS, AnalysisConfig, RunConfig
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.pipeline.models.synthetic_cnn import load_synthetic_classifier
from fidoflow.pipeline.stages import aggregate_run, evaluate_shard, pending, reclassify_shard
from fidoflow.storage import masks, parts, tables
from fidoflow.storage.runfolder import RunFolder
from fidoflow.storage.runrecord import RunMismatch
from tests.test_report import assert_all_images_loaded, chromium, render_in_browser  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = AnalysisConfig(evaluate=EvaluateConfig(steps=4), bootstrap=BootstrapConfig(resamples=200),
                      gallery=3, flips=2)


def synthetic_model() -> LoadedModel:
    module, names = load_synthetic_classifier()
    return LoadedModel("synthetic-cnn", module, list(names), (96, 96), "0" * 64)


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    """Ten 160 px scenes with small birds (labels, splits, wing-patch boxes) explained by the
    synthetic CNN, then re-classified, evaluated and aggregated by the stage functions."""
    tmp = tmp_path_factory.mktemp("labelled")
    archive = write_archive(tmp / "birds", n=10, seed=5, size=160, small_objects=True)
    truth = pd.read_csv(archive / "ground_truth.csv")
    manifest = pa.table({
        "image_id": truth.image_id, "path": truth.path,
        "width": pa.array([160] * 10, pa.int32()), "height": pa.array([160] * 10, pa.int32()),
        "label": pa.array(truth.label, pa.int32()), "label_name": truth.class_name,
        "split": ["train" if i < 6 else "test" for i in range(10)],
        "model_label": pa.array(truth.label, pa.int32()),
        **{f"box_{k}": pa.array(truth[k], pa.float32()) for k in ("x0", "y0", "x1", "y1")},
        "shard": pa.array([i // 4 for i in range(10)], pa.int32()),
    })
    run = tmp / "run"
    config = RunConfig(source=str(archive), root=str(run), model="synthetic-cnn",
                       methods=parse_methods("scd:iterations=4:samples=2:mask_size=12"),
                       mask_size=12,
                       shard_size=4, task_size=4, batch_size=4, workers=1)
    folder = RunFolder(str(run))
    folder.makedirs()
    folder.write_table(manifest, "manifest.parquet")
    masks.create_store(folder.masks_url, 10, 4, 4, 12,
                       {"scd": {**config.methods["scd"].to_json(),
                                "maps": config.methods["scd"].map_names}},
                       lambda first: [(0, list(truth.image_id))])
    patch = pytest.MonkeyPatch()
    model = synthetic_model()
    patch.setattr(stages.worker, "worker_model", lambda *args, **kwargs: model)
    try:
        for shard in range(3):
            stages.explain_shard(config, shard)
            reclassify_shard(config, shard, TINY)
            evaluate_shard(config, shard, TINY)
        aggregate_run(config, TINY)
    finally:
        patch.undo()
    return config, run


def test_reclassify_parts_hold_the_baseline_and_every_variant(labelled_run) -> None:
    _, run = labelled_run
    found = [pq.read_table(p) for p in sorted((run / "reclassify").glob("part-*.parquet"))]
    assert len(found) == 3 and all(t.schema.equals(tables.RECLASSIFY.schema) for t in found)
    frame = pd.concat([t.to_pandas() for t in found])
    assert len(frame) == 10 * 4  # global + crop, blend, crop+global
    assert sorted(frame.groupby(["method", "variant"]).size().items()) == [
        (("none", "global"), 10), (("scd", "blend"), 10), (("scd", "crop"), 10),
        (("scd", "crop+global"), 10)]
    assert (frame.correct == (frame.top1 == frame.model_label)).all()
    crops = frame[frame.variant.isin(["crop", "crop+global"])]
    assert crops[["crop_x0", "crop_y0", "crop_x1", "crop_y1"]].notna().all().all()
    side = crops.crop_x1 - crops.crop_x0
    assert (side >= round(64 * 160 / 224)).all() and (crops.crop_x1 <= 160).all()
    assert (side == crops.crop_y1 - crops.crop_y0).all()  # square inside a square picture
    assert frame[frame.variant.isin(["global", "blend"])].crop_x0.isna().all()
    assert frame.top5.map(len).eq(5).all() and frame.top1_prob.between(0, 1).all()


def test_metrics_parts_hold_curves_and_box_metrics(labelled_run) -> None:
    _, run = labelled_run
    frame = pd.concat([pq.read_table(p).to_pandas()
                       for p in sorted((run / "metrics").glob("part-*.parquet"))])
    assert len(frame) == 10 and frame.deletion_curve.map(len).eq(5).all()
    assert frame.deletion_auc.between(0, 1).all() and frame.insertion_auc.between(0, 1).all()
    assert frame.pointing_hit.notna().all() and frame.box_iou.between(0, 1).all()
    assert frame.fdr.between(0, 1).all()
    first = frame.iloc[0]
    assert first.deletion_auc == pytest.approx(np.trapezoid(first.deletion_curve,
                                                            np.linspace(0, 1, 5)), abs=1e-3)


def test_summary_and_report_of_a_labelled_run(labelled_run) -> None:
    _, run = labelled_run
    summary = pq.read_table(run / "summary.parquet")
    assert summary.schema.equals(tables.SUMMARY.schema)
    frame = summary.to_pandas()
    top1 = frame[(frame.section == "accuracy") & (frame.statistic == "top1")]
    assert set(top1.group_by) == {"overall", "class", "split"}
    reclassified = pd.read_parquet(run / "reclassify")
    base = reclassified[reclassified.variant == "global"]
    overall = top1[(top1.group_by == "overall") & (top1.method == "none")].iloc[0]
    assert overall.value == pytest.approx(base.correct.mean()) and overall.n == 10
    assert set(frame[frame.section == "metric"].statistic) >= {
        "deletion_auc", "insertion_auc", "pointing_hit", "box_iou", "fdr", "share_in_box"}
    html = (run / "report.html").read_text()
    assert "Accuracy per class" in html and "Gallery" in html


def readme_examples() -> tuple[str, list[tuple[str, str]]]:
    """The Python example and the named SQL queries of README's "Reading the results"."""
    text = README.read_text()
    section = text.split("## Reading the results", 1)[1]
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    sql = re.search(r"```sql\n(.*?)```", section, re.DOTALL).group(1)
    queries = []
    for statement in filter(str.strip, sql.split(";")):
        name, _, body = statement.strip().partition("\n")
        queries.append((name.removeprefix("-- ").strip(), body))
    return python, queries


LAST_NIGHT = "what came in last night: the images the newest increment explained, with its record"


def run_readme_queries(run: Path) -> dict[str, pd.DataFrame]:
    """Every query of the README on ``run`` (the increments one where the run has increments:
    ``labelled_run`` is made by the stage functions from a manifest written here)."""
    python, queries = readme_examples()
    assert [n for n, _ in queries] == ["accuracy per class", "images that flipped", LAST_NIGHT,
                                       "worst masks"]
    exec(compile(python.replace("runs/demo", str(run)), "README.md", "exec"), {})  # noqa: S102
    con = duckdb.connect()
    return {name: con.sql(body.replace("runs/demo", str(run))).df() for name, body in queries
            if name != LAST_NIGHT or (run / "increments").exists()}


def test_readme_queries_answer_the_analysts_questions(labelled_run, capsys) -> None:
    _, run = labelled_run
    results = run_readme_queries(run)
    reclassified = pd.read_parquet(run / "reclassify")

    per_class = results["accuracy per class"]
    truth = pd.read_csv(Path(labelled_run[0].source) / "ground_truth.csv")
    assert set(per_class["class"]) == set(truth.class_name)
    assert len(per_class) == truth.class_name.nunique() * 4
    crop = reclassified[reclassified.variant == "crop"]
    expected = crop.groupby("label_name").correct.mean()
    got = per_class[per_class.variant == "crop"].set_index("class").top1
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)

    flipped = results["images that flipped"]
    base = reclassified[reclassified.variant == "global"].set_index("image_id").correct
    others = reclassified[reclassified.variant != "global"]
    changed = others[others.correct.to_numpy() != base.loc[others.image_id].to_numpy()]
    assert sorted(zip(flipped.image_id, flipped.variant, strict=True)) == sorted(
        zip(changed.image_id, changed.variant, strict=True))
    assert set(flipped.flip) <= {"wrong→right", "right→wrong"}

    worst = results["worst masks"]
    assert len(worst) == 10 and worst.path.notna().all()
    score = (worst.insertion_auc - worst.deletion_auc).to_numpy()
    assert (np.diff(score) >= -1e-6).all()
    assert "group_value" in capsys.readouterr().out  # the pandas example printed its tables


def test_rerun_skips_done_shards_and_redoes_a_missing_one(labelled_run) -> None:
    config, run = labelled_run
    assert pending(config, "reclassify", 3) == []
    part = run / "reclassify" / parts.part_name(1)
    before = pq.read_table(part)
    part.unlink()
    assert pending(config, "reclassify", 3) == [1]
    patch = pytest.MonkeyPatch()
    patch.setattr(stages.worker, "worker_model", lambda *args, **kwargs: synthetic_model())
    try:
        reclassify_shard(config, 1, TINY)
    finally:
        patch.undo()
    after = pq.read_table(part)
    assert after.drop_columns(["seconds"]).equals(before.drop_columns(["seconds"]))
    # no image failed: no stage wrote an (empty) error part
    assert parts.read_errors(RunFolder(str(run))).num_rows == 0
    assert not list(run.glob("errors/*.parquet"))


@pytest.mark.slow
def test_fidoflow_run_ends_with_the_analysis_tables_report_and_artifacts(
        photo_folder: Path, tmp_path: Path, monkeypatch, capsys, request) -> None:
    """One CLI run (three photos, two shards, both FIDO samplers, tiny settings)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from fidoflow.flows import explain_archive
    from fidoflow.flows.cli import main
    from fidoflow.flows.server import prefect_api

    chromium_path = request.getfixturevalue("chromium")
    monkeypatch.setattr(explain_archive, "DEFAULT_ANALYSIS", TINY)
    run = tmp_path / "run"
    argv = ["run", str(photo_folder), "--out", str(run), "--iterations", "2", "--samples", "1",
            "--mask-size", "8", "--shard-size", "2", "--method", "scd,cd"]
    with prefect_api() as url:
        began = time.perf_counter()
        assert main(argv) == 0
        print(f"fidoflow run: {time.perf_counter() - began:.0f} s")
        with temporary_settings(updates={PREFECT_API_URL: url}), \
                get_client(sync_client=True) as client:
            # the test run's server is shared: this run's flow is the one on this run folder
            (flow_run,) = [r for r in client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["explain-run"])),
                sort=FlowRunSort.END_TIME_DESC, limit=20)
                if (r.parameters.get("config_json") or {}).get("root") == str(run)]
            artifacts = {key: client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))[-1]
                for key in ("fidoflow-summary", "fidoflow-report", "fidoflow-progress")}
            task_runs = task_runs_of(client, flow_run.id)
    out = capsys.readouterr().out
    assert "2 of 2 shards run, 3 images, 0 errors" in out and "in 2 tasks" in out
    # the operator's view: one task run per task (all stages of its shards), the worker probe,
    # the preparation, the compaction and the aggregate; the progress artifact at 100 %
    assert sorted(r.name if r.name.startswith("shards") else r.name.rsplit("-", 1)[0]
                  for r in task_runs) == [
        "aggregate-run", "check-worker", "compact-run", "prepare-run", "shards 0-0",
        "shards 1-1"]
    assert all(r.state_name == "Completed" for r in task_runs)
    progress = artifacts["fidoflow-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "2 of 2 tasks, 3 of 3 images explained, 0 errors" in progress.description

    for stage in ("reclassify", "metrics"):
        names = sorted(p.name for p in (run / stage).glob("*.parquet"))
        assert names == ["part-00000-00001.parquet"]  # two tasks, compacted at the end
    reclassified = pd.read_parquet(run / "reclassify")
    assert len(reclassified) == 3 * (1 + 2 * 3) and reclassified.correct.isna().all()
    metrics = pd.read_parquet(run / "metrics")
    assert len(metrics) == 3 * 2 and metrics.deletion_curve.map(len).eq(5).all()
    summary = pd.read_parquet(run / "summary.parquet")
    assert set(summary.section) >= {"run", "accuracy_gain", "metric", "errors", "timing"}
    assert set(summary[summary.section == "timing"].group_value) == {
        "explain", "reclassify", "evaluate"}

    table = artifacts["fidoflow-summary"]
    assert table.type == "table" and len(table.data if isinstance(table.data, list)
                                         else __import__("json").loads(table.data)) == len(summary)
    assert str(run / "report.html") in artifacts["fidoflow-report"].data

    dom = render_in_browser(chromium_path, run / "report.html", tmp_path,
                            screenshot=tmp_path / "report.png")
    assert_all_images_loaded(dom)
    # the curves, then per image its picture and each method's three maps (joint, ssr, sdr)
    assert len(re.findall(r"<img\b", dom)) >= 1 + 3 * (1 + 2 * 3)
    results = run_readme_queries(run)  # no labels: the queries still run, with no accuracy rows
    assert results["accuracy per class"].empty and results["images that flipped"].empty
    assert len(results["worst masks"]) == 6
    assert results[LAST_NIGHT].image_id.nunique() == 3  # the run's one increment: every image


def task_runs_of(client, flow_run_id, timeout: float = 30.0) -> list:
    """The task runs the server recorded for a flow run (its recorder works asynchronously)."""
    import time

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
        if (len(runs) >= 5 and all(r.state_name == "Completed" for r in runs)) \
                or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def test_analysis_settings_are_recorded_once_and_other_ones_refused(tmp_path: Path) -> None:
    config = RunConfig(source=str(tmp_path), root=str(tmp_path / "run"))
    folder = RunFolder(config.root)
    folder.makedirs()
    folder.write_json({"schema_version": 2, "config": {}}, "run.json")
    stages.record_analysis(config, TINY.to_json())
    stages.record_analysis(config, TINY.to_json())  # the same settings again: resumes
    assert folder.read_json("run.json")["analysis"]["gallery"] == TINY.gallery
    with pytest.raises(RunMismatch, match="other analysis settings"):
        stages.record_analysis(config, DEFAULT_ANALYSIS.to_json())
