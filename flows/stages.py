"""The stages of a run as plain functions: pipeline + storage wired together, no Prefect inside.

Tasks in ``explain_archive.py`` call these; so can a notebook or a test.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import fidoflow.pipeline
import pandas as pd
import pyarrow as pa
from fidoflow.pipeline.analysis.explain import explain_rows
from fidoflow.pipeline.archive.labels import map_labels, read_label_map
from fidoflow.pipeline.archive.readers import read_archive
from fidoflow.pipeline.methods.registry import kind
from fidoflow.pipeline.models.loading import LoadedModel, load_model
from fidoflow.storage import masks, parts, schemas
from fidoflow.storage.runfolder import SCHEMA_VERSION, RunFolder

from .config import RunConfig


class RunMismatch(RuntimeError):
    """RUN already holds a run made with other settings."""


class EmptyArchive(ValueError):
    """The source has no image rows at all."""


@functools.cache
def worker_model(spec: str, card: str | None = None, trust_code: bool = False) -> LoadedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    return load_model(spec, card, trust_code)


def model_of(config: RunConfig) -> LoadedModel:
    """The run's model (spec, card and trust flag from the config), once per process."""
    return worker_model(config.model, config.model_card, config.trust_model_code)


def code_version() -> str:
    here = Path(fidoflow.pipeline.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except OSError:
        sha = ""
    from importlib.metadata import version
    return f"{version('fidoflow')}+{sha}" if sha else version("fidoflow")


LARGEST_AUTO_SHARD = 16


def auto_shard_size(images: int, workers: int, largest: int = LARGEST_AUTO_SHARD) -> int:
    """Images per shard when the user does not say: the fewest rounds of at most ``largest``
    images per worker, split evenly, so every worker has a shard in every round (8 images on
    2 workers: 2 shards of 4; 48: 4 of 12; 256: 16 of 16)."""
    workers = max(workers, 1)
    rounds = -(-images // (workers * largest))
    return max(1, -(-images // (workers * rounds)))


def build_manifest(config: RunConfig, model: LoadedModel) -> tuple[RunConfig, pa.Table, dict]:
    """The config with its shard size resolved, the manifest table of the run's archive (labels
    mapped to the model, shards assigned) and the label-mapping report. Raises on archive-level
    problems only."""
    label_map = (read_label_map(config.label_map, model.class_names)
                 if config.label_map else None)
    frame = read_archive(config.source, config.format, config.split, config.images_root)
    if frame.empty:
        split = "" if config.split == "all" else f" in the {config.split} split"
        raise EmptyArchive(f"{config.source} holds no images{split} (folders are searched "
                           "recursively for image files); nothing to do")
    if config.shard_size is None:
        config = replace(config, shard_size=auto_shard_size(len(frame), config.workers))
    mapping = map_labels(frame["label_name"], model.class_names, label_map)
    frame["model_label"] = pd.array(mapping.model_label, dtype="Int32")
    frame["shard"] = pd.array([i // config.shard_size for i in range(len(frame))], dtype="Int32")
    table = pa.Table.from_pandas(frame[schemas.MANIFEST.names], schema=schemas.MANIFEST,
                                 preserve_index=False)
    return config, table, mapping.report()


def prepare_run(config: RunConfig) -> tuple[RunConfig, int]:
    """Create or reopen the run folder: run.json, manifest.parquet, masks.zarr. Returns the
    config with its shard size resolved (chosen now, or the one the folder was made with) and
    the number of shards.

    The archive is read before anything is written, so a source or option the readers refuse
    leaves no half-made run folder behind.
    """
    run = RunFolder(config.root)
    model = model_of(config)
    if run.exists("run.json"):
        recorded = run.read_json("run.json")
        if recorded.get("schema_version") != SCHEMA_VERSION:
            raise RunMismatch(f"{config.root} was written with table schema "
                              f"{recorded.get('schema_version')}, this fidoflow writes "
                              f"{SCHEMA_VERSION}; use another --out")
        if config.shard_size is None:  # automatic: whatever the first run chose
            config = replace(config, shard_size=recorded["config"].get("shard_size"))
        if recorded["config"] != _normalised(config.results_identity()):
            raise RunMismatch(f"{config.root} holds a run with other settings; "
                              "use another --out or the same options")
        if not run.exists("manifest.parquet"):
            config, table, _ = build_manifest(config, model)
            run.write_table(table, "manifest.parquet")
    else:
        config, table, labels = build_manifest(config, model)
        run.makedirs()
        run.write_json({
            "schema_version": SCHEMA_VERSION,
            "config": config.results_identity(),
            "model": model.describe(),
            "labels": labels,
            "code_version": code_version(),
            "seed": config.seed,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }, "run.json")
        run.write_table(table, "manifest.parquet")
    manifest = run.read_table("manifest.parquet")
    masks.create_store(
        run.masks_url, manifest.num_rows, config.shard_size, config.mask_size,
        {name: {**spec.to_json(), "maps": spec.map_names} for name, spec in config.methods.items()},
        manifest.column("image_id").to_pylist(),
    )
    return config, -(-manifest.num_rows // config.shard_size)


def record_analysis(config: RunConfig, analysis: dict) -> None:
    """Write the analysis settings into run.json on the first analysing run; refuse a later run
    with other ones, whose parts would mix with the done shards' (``--explain-only`` runs
    record nothing)."""
    run = RunFolder(config.root)
    record = run.read_json("run.json")
    wanted = _normalised(analysis)
    if "analysis" not in record:
        run.write_json({**record, "analysis": wanted}, "run.json")
    elif record["analysis"] != wanted:
        raise RunMismatch(f"{config.root} was analysed with other analysis settings; "
                          "use another --out or the same settings")


def manifest_report(config: RunConfig) -> dict[str, object]:
    """What the manifest says about refused rows and labels, for the CLI's closing lines."""
    run = RunFolder(config.root)
    frame = run.read_table("manifest.parquet").select(
        ["label_name", "model_label", "manifest_error"]).to_pandas()
    refused = frame["manifest_error"].dropna().value_counts().to_dict()
    labelled = frame["label_name"].notna()
    unmapped = frame.loc[labelled & frame["model_label"].isna(), "label_name"]
    labels = run.read_json("run.json").get("labels", {})
    return {"rows": len(frame), "refused": {str(k): int(v) for k, v in refused.items()},
            "labelled": int(labelled.sum()), "mapped": int(frame["model_label"].notna().sum()),
            "unmapped": len(unmapped),
            "unmapped_names": {str(k): int(v)
                               for k, v in unmapped.value_counts().head(10).items()},
            "label_mode": labels.get("mode")}


def _normalised(record: dict) -> dict:
    """JSON round trip, so a fresh config compares equal to the one read from run.json."""
    import json
    return json.loads(json.dumps(record, sort_keys=True))


def pending_shards(config: RunConfig, n_shards: int) -> list[int]:
    done = parts.done_shards(RunFolder(config.root), "predictions")
    return [s for s in range(n_shards) if s not in done]


def shard_rows(run: RunFolder, config: RunConfig, shard: int) -> tuple[int, list[dict]]:
    """The first mask row of ``shard`` and its manifest records, read without the other shards."""
    rows = run.read_table("manifest.parquet", filters=[("shard", "==", shard)]).to_pylist()
    return shard * config.shard_size, rows


def explain_shard(config: RunConfig, shard: int) -> dict[str, float]:
    """Masks and predictions of one shard; the predictions part, written last, marks it done.
    ``seconds`` is the shard's whole time on its worker (decode, explain, write)."""
    began, started = time.perf_counter(), time.time()
    run = RunFolder(config.root)
    start, rows = shard_rows(run, config, shard)
    model = model_of(config)
    result = explain_rows(model, config.archive_root, rows, config.methods, config.seed,
                          config.images_per_step, config.device, config.decode_limits,
                          config.compile, config.mask_size, config.target)
    for method, maps in result.maps.items():
        masks.write_region(run.masks_url, method, start, maps)
    parts.write_part(run, "errors", shard, pa.Table.from_pylist(result.errors, schemas.ERRORS),
                     schemas.ERRORS)
    if any(kind(spec.kind).method.has_graphs for spec in config.methods.values()):
        parts.write_part(run, "sag", shard, pa.Table.from_pylist(result.graphs, schemas.SAG),
                         schemas.SAG)
    parts.write_part(run, "predictions", shard,
                     pa.Table.from_pylist(result.predictions, schemas.PREDICTIONS),
                     schemas.PREDICTIONS)
    return {"shard": shard, "images": len(rows), "errors": len(result.errors),
            "seconds": time.perf_counter() - began, "started": started}


def set_worker_threads(workers: int) -> None:
    """Share the machine's cores between worker processes instead of oversubscribing them."""
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))
