"""The stages of a run as plain functions: pipeline + storage wired together, no Prefect inside.

Tasks in ``explain_archive.py`` call these; so can a notebook or a test.
"""

from __future__ import annotations

import functools
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

import pipeline
from pipeline.explain import explain_rows
from pipeline.models import LoadedModel, load_model
from pipeline.readers import read_folder
from storage import masks, parts, schemas
from storage.runfolder import SCHEMA_VERSION, RunFolder

from .config import RunConfig


class RunMismatch(RuntimeError):
    """RUN already holds a run made with other settings."""


@functools.cache
def worker_model(spec: str) -> LoadedModel:
    """The model, loaded once per process (each Dask worker keeps its own)."""
    return load_model(spec)


def code_version() -> str:
    here = Path(pipeline.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        sha = ""
    from importlib.metadata import version
    return f"{version('fidoflow')}+{sha}" if sha else version("fidoflow")


def prepare_run(config: RunConfig) -> int:
    """Create or reopen the run folder: run.json, manifest.parquet, masks.zarr. Returns #shards."""
    run = RunFolder(config.root)
    model = worker_model(config.model)
    if run.exists("run.json"):
        recorded = run.read_json("run.json")
        if recorded["config"] != _normalised(config.results_identity()):
            raise RunMismatch(f"{config.root} holds a run with other settings; "
                              "use another --out or the same options")
    else:
        run.makedirs()
        run.write_json({
            "schema_version": SCHEMA_VERSION,
            "config": config.results_identity(),
            "model": {"name": model.name, "sha256": model.identity,
                      "input_size": list(model.input_size), "classes": len(model.class_names)},
            "code_version": code_version(),
            "seed": config.seed,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, "run.json")
    if not run.exists("manifest.parquet"):
        frame = read_folder(Path(config.source))
        frame["shard"] = [i // config.shard_size for i in range(len(frame))]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        run.write_table(table.select(schemas.MANIFEST.names).cast(schemas.MANIFEST), "manifest.parquet")
    manifest = run.read_table("manifest.parquet")
    masks.create_store(
        run.masks_url, manifest.num_rows, config.shard_size, config.mask_size,
        {name: cfg.as_dict() for name, cfg in config.methods.items()},
        manifest.column("image_id").to_pylist(),
    )
    return -(-manifest.num_rows // config.shard_size)


def _normalised(record: dict) -> dict:
    """JSON round trip, so a fresh config compares equal to the one read from run.json."""
    import json
    return json.loads(json.dumps(record, sort_keys=True))


def pending_shards(config: RunConfig, n_shards: int) -> list[int]:
    done = parts.done_shards(RunFolder(config.root), "predictions")
    return [s for s in range(n_shards) if s not in done]


def explain_shard(config: RunConfig, shard: int) -> dict[str, int]:
    """Masks and predictions of one shard; the predictions part, written last, marks it done."""
    run = RunFolder(config.root)
    manifest = run.read_table("manifest.parquet")
    start = shard * config.shard_size
    rows = manifest.slice(start, config.shard_size).to_pylist()
    model = worker_model(config.model)
    result = explain_rows(model, Path(config.source), rows, config.methods, config.seed,
                          config.batch_size, config.device)
    for method, maps in result.maps.items():
        masks.write_region(run.masks_url, method, start, maps)
    parts.write_part(run, "errors", shard, pa.Table.from_pylist(result.errors, schemas.ERRORS),
                     schemas.ERRORS)
    parts.write_part(run, "predictions", shard,
                     pa.Table.from_pylist(result.predictions, schemas.PREDICTIONS),
                     schemas.PREDICTIONS)
    return {"shard": shard, "images": len(rows), "errors": len(result.errors)}


def set_worker_threads(workers: int) -> None:
    """Share the machine's cores between worker processes instead of oversubscribing them."""
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))
