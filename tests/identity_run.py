"""A fixed run of every method kind through every stage, and its fingerprint.

The structure issue (21) promises the same masks and tables before and after the code moved;
``tests/test_identity.py`` compares this run with ``tests/data/identity.json.gz``, written by
``python -m tests.identity_run --write`` at the commit before the change. The fingerprint holds
every stored map (float16 values, as lists) and every table row but wall-clock columns.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

REFERENCE = Path(__file__).resolve().parent / "data" / "identity.json.gz"
# mask_size=8 of extremal, igos and igospp came from the run-wide --mask-size when the
# reference was written; run-wide options reach the FIDO kinds only since (issue 21, item 6)
METHODS = ("scd:iterations=4:samples=2,cd:iterations=3:samples=2,"
           "gradcam,ig:steps=4,saliency,smoothgrad:samples=2,occlusion:window=32:stride=32,"
           "extremal:iterations=3:mask_size=8,igos:iterations=2:integration_steps=2:mask_size=8,"
           "igospp:iterations=1:integration_steps=2:mask_size=8,rise:masks=16:batch=8,"
           "sag:batch=32")
IMAGES, SHARD, SIZE, MASK = 6, 4, 96, 8
TIMING = {"seconds", "started"}  # columns that hold wall-clock time
LATER = ("shard", "increment")  # bookkeeping columns the rows gained after the reference


def write_source(folder: Path) -> Path:
    """Six synthetic scenes as a manifest CSV with labels, splits and boxes."""
    from fidoflow.pipeline.archive.synthetic import write_archive

    archive = write_archive(folder / "birds", n=IMAGES, seed=3, size=SIZE, small_objects=True)
    truth = pd.read_csv(archive / "ground_truth.csv")
    manifest = pd.DataFrame({
        "image_id": truth.image_id, "path": truth.path, "label_name": truth.class_name,
        "split": ["train" if i % 2 else "test" for i in range(IMAGES)],
        **{f"box_{k}": truth[k] for k in ("x0", "y0", "x1", "y1")}})
    manifest.to_csv(archive / "manifest.csv", index=False)
    return archive / "manifest.csv"


# what the analysis stages write from the maps
ANALYSED = ("reclassify", "metrics", "parts", "summary.parquet", "report.html",
            "errors/reclassify-part-*", "errors/evaluate-part-*")


def identity_run(folder: Path, maps: dict[str, list[int]] | None = None) -> Path:
    """The fixed run, stage by stage in this process; returns the run folder. Given ``maps``
    (a fingerprint's), the explained run's maps are replaced by them before the analysis
    stages: what this code makes of those maps."""
    import shutil

    import torch

    from fidoflow.pipeline import stages
    from fidoflow.pipeline.analysis.aggregate import BootstrapConfig
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
    from fidoflow.pipeline.config import AnalysisConfig
    from fidoflow.pipeline.settings import RunSettings

    torch.set_num_threads(1)
    analysis = AnalysisConfig(evaluate=EvaluateConfig(steps=4),
                              bootstrap=BootstrapConfig(resamples=50), gallery=2, flips=1)
    settings = RunSettings(method=METHODS, mask_size=MASK, model="synthetic-cnn",
                           shard_size=SHARD, batch_size=2, workers=1)
    config = settings.to_config(str(write_source(folder)), str(folder / "run"))
    config, shards = stages.prepare_run(config)
    stages.record_analysis(config, analysis.to_json())
    for shard in range(shards):
        stages.explain_shard(config, shard)
    if maps is not None:
        replace_maps(Path(config.root), maps)
        for pattern in ANALYSED:
            for path in Path(config.root).glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for shard in range(shards):
        stages.reclassify_shard(config, shard, analysis)
        stages.evaluate_shard(config, shard, analysis)
    stages.aggregate_run(config, analysis)
    return Path(config.root)


def replace_maps(run: Path, maps: dict[str, list[int]]) -> None:
    """Overwrite every stored map of ``run`` with a fingerprint's (float16 bits)."""
    import zarr

    store = zarr.open_group(str(run / "masks.zarr"), mode="r+")
    for key, bits in maps.items():
        method, name = key.split("/")
        array = store[method][name]
        array[:] = np.array(bits, dtype=np.uint16).view(np.float16).reshape(array.shape)


def _plain(value: object) -> object:
    """A JSON value that keeps every bit of a float (NaN as a string)."""
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else float(value).hex()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value


def _rows(table: pa.Table, keys: list[str]) -> list[dict]:
    frame = table.to_pandas()
    frame = frame.drop(columns=[c for c in frame.columns if c in TIMING])
    frame = frame.sort_values([k for k in keys if k in frame.columns], kind="stable")
    return [_plain(row) for row in frame.to_dict("records")]


def fingerprint(run: Path) -> dict[str, object]:
    """Every map of masks.zarr and every table row (wall-clock columns left out)."""
    import pyarrow.parquet as pq
    import zarr

    store = zarr.open_group(str(run / "masks.zarr"), mode="r")
    maps = {}
    for method in sorted(k for k in store.group_keys()):
        for name in sorted(store[method].attrs["maps"]):
            values = np.asarray(store[method][name][:], dtype=np.float16)
            maps[f"{method}/{name}"] = values.view(np.uint16).ravel().tolist()
    tables = {}
    keys = ["image_id", "method", "variant", "node", "section", "group_by", "group_value",
            "statistic", "stage"]
    for folder in ("predictions", "reclassify", "metrics", "errors", "sag"):
        files = sorted((run / folder).glob("*.parquet"))
        if files:  # rows name their shard and increment since the reference was written
            table = pa.concat_tables([pq.read_table(f) for f in files])
            tables[folder] = _rows(table.drop_columns([c for c in LATER
                                                       if c in table.column_names]), keys)
    manifest = pq.read_table(run / "manifest.parquet").drop_columns(["increment"])
    tables["manifest"] = _rows(manifest, keys)
    summary = pq.read_table(run / "summary.parquet").to_pandas()
    summary = summary[summary["section"] != "timing"]
    tables["summary"] = _rows(pa.Table.from_pandas(summary, preserve_index=False), keys)
    return {"maps": maps, "tables": tables}


def cpu_capability() -> str:
    import torch
    return str(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write tests/data/identity.json.gz")
    parser.add_argument("--work", default="/tmp/fidoflow-identity")
    args = parser.parse_args()
    import shutil
    shutil.rmtree(args.work, ignore_errors=True)
    record = {"cpu_capability": cpu_capability(), **fingerprint(identity_run(Path(args.work)))}
    if args.write:
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_bytes(gzip.compress(json.dumps(record, sort_keys=True).encode(), 9,
                                            mtime=0))
    print(f"{len(record['maps'])} maps, "
          f"{sum(len(v) for v in record['tables'].values())} table rows")


if __name__ == "__main__":
    main()
