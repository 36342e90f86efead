"""The aggregate stage of a run: every shard's parts into ``summary.parquet`` and
``report.html``. Pipeline + storage wired together, no Prefect inside: the flow's last task
calls it; so can a notebook or a test, on a run folder whatever state its shards are in."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from fidoflow.pipeline.analysis.aggregate import build_summary
from fidoflow.storage import parts, schemas
from fidoflow.storage.runfolder import RunFolder

from .analysis_config import DEFAULT_ANALYSIS, AnalysisConfig
from .analysis_shards import ERROR_PREFIXES
from .config import RunConfig
from .report_stage import build_report

TIMING_COLUMNS = ["stage", "method", "image_id", "seconds"]


def aggregate_run(config: RunConfig, analysis: AnalysisConfig = DEFAULT_ANALYSIS
                  ) -> dict[str, object]:
    """``summary.parquet`` and ``report.html`` from every part of the run; returns their URLs
    and the number of summary rows (for the caller's artifacts)."""
    run = RunFolder(config.root)
    manifest = run.read_table("manifest.parquet").to_pandas()
    predictions = parts.read_stage(run, "predictions", schemas.PREDICTIONS).to_pandas()
    reclassified = parts.read_stage(run, "reclassify", schemas.RECLASSIFY).to_pandas()
    metrics = parts.read_stage(run, "metrics", schemas.METRICS).to_pandas()
    errors = read_errors(run)
    summary = build_summary(manifest, reclassified, metrics, errors,
                            timings_of(predictions, reclassified, metrics), analysis.bootstrap)
    run.write_table(pa.Table.from_pandas(summary, schema=schemas.SUMMARY, preserve_index=False),
                    "summary.parquet")
    html = build_report(config, analysis, run, manifest, reclassified, metrics, summary)
    run.write_bytes_atomic(html.encode("utf-8"), "report.html")
    return {"summary": run.url("summary.parquet"), "report": run.url("report.html"),
            "rows": len(summary)}


def read_errors(run: RunFolder) -> pd.DataFrame:
    """Every error part of the run (explain's and the analysis stages')."""
    return parts.read_stage(run, "errors", schemas.ERRORS, ERROR_PREFIXES).to_pandas()


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
