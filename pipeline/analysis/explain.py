"""Explaining one shard: decode, classify, optimise masks for many images at once.

Works on file paths and tensors and returns plain records and arrays; where they are stored is the
caller's business.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fidoflow.pipeline.analysis.records import error_record
from fidoflow.pipeline.archive.readers.common import check_path
from fidoflow.pipeline.imaging.decode import DecodeLimits, to_tensor
from fidoflow.pipeline.imaging.views import decode_row
from fidoflow.pipeline.methods.registry import MethodSpec
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.inference import class_probabilities
from fidoflow.pipeline.models.loading import LoadedModel

TARGETS = ("predicted", "label")  # which class a map explains: top-1, or the manifest's label
CLASSIFY_BATCH = 32  # images per forward pass of the shard's first classification


def image_seed(run_seed: int, image_id: str) -> int:
    """A stable per-image seed: same run seed and image → same masks, whatever the batch."""
    digest = hashlib.sha256(f"{run_seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class ShardResult:
    """Per method: prediction records and (n_rows, h, w) maps with NaN rows for failed images;
    per table, the rows of the methods that declare one (``Method.table``: SAG's graph nodes,
    the concept methods' contributions); and what
    each file read was (``images`` rows: size, modification time, hash, dimensions)."""

    predictions: list[dict[str, object]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    images: list[dict[str, object]] = field(default_factory=list)
    crops: list[tuple[int, tuple | None]] = field(default_factory=list)  # row, region
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, object]]] = field(default_factory=dict)


def load_batch(
    root: Path, rows: Sequence[dict], size: tuple[int, int], result: ShardResult,
    limits: DecodeLimits | None = None, resize: str = "squash",
    left_out: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[list[int], torch.Tensor | None]:
    """Decode ``rows``; failures become error records. Returns the indices that decoded.
    ``left_out``: image id -> (error type, message) of rows not to open at all (an image that
    killed every worker explaining it), recorded as errors of the explain stage.

    Rows the manifest refused (``manifest_error``) are reported with stage "manifest" and
    never opened, as are paths that lead out of the archive root (links); every other
    failure, of any kind, is a "decode" error of that image alone. Each file is read once:
    its bytes are hashed and decoded, and its ``images`` row records them. JPEGs decode at a
    reduced DCT scale while both sides stay at least twice the model input.
    """
    ok, tensors = [], []
    root_real = os.path.realpath(root)
    for i, row in enumerate(rows):
        if left_out and row["image_id"] in left_out:
            result.errors.append(error_record(row, "decode", *left_out[row["image_id"]]))
            continue
        refused = row.get("manifest_error")
        if refused:
            result.errors.append(error_record(row, "manifest", str(refused),
                                              str(row.get("manifest_message") or "")))
            continue
        unsafe, message, real = check_path(root_real, row["path"])
        if real is None:  # the file changed since the manifest was written
            stage = "manifest" if unsafe == "UnsafePath" else "decode"
            result.errors.append(error_record(row, stage, str(unsafe), str(message)))
            continue
        try:
            data, record = read_file(row, real)
        except OSError as exc:
            result.errors.append(error_record(row, "decode", "MissingFile", str(exc)))
            continue
        result.images.append(record)
        try:
            img, region = decode_row(Path(real), row, limits or DecodeLimits(),
                                     2 * max(size), data)
            record["width"], record["height"] = _file_size(img, region)
            tensors.append(to_tensor(img, size, resize))
            result.crops.append((i, region))
            ok.append(i)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
            result.errors.append(error_record(row, "decode", type(exc).__name__, str(exc)))
    return ok, (torch.stack(tensors) if tensors else None)


def _file_size(img: object, region: tuple | None) -> tuple[int, int]:
    """The file's (width, height) as displayed, also when ``img`` is a crop of it."""
    return img.info.get("frame_size", img.info["original_size"]) if region else \
        img.info["original_size"]


def read_file(row: dict, real: str) -> tuple[bytes, dict[str, object]]:
    """The bytes of ``row``'s file and its ``images`` row (size, modification time, hash;
    the dimensions are filled once it decodes)."""
    with open(real, "rb") as fh:
        stat = os.fstat(fh.fileno())
        data = fh.read()
    return data, {"image_id": row["image_id"], "path": row["path"], "bytes": len(data),
                  "mtime_ns": stat.st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest(),
                  "width": None, "height": None}


def explain_rows(
    model: LoadedModel, root: Path, rows: Sequence[dict], methods: dict[str, MethodSpec],
    seed: int, batch_size: int = 8, device: str = "cpu", limits: DecodeLimits | None = None,
    compile_model: bool = False, mask_size: int = 28, target: str = "predicted",
    left_out: Mapping[str, tuple[str, str]] | None = None,
) -> ShardResult:
    """Maps of every method instance for ``rows`` (manifest records): the shard's images are
    decoded and classified once, then each method explains them ``batch_size`` at a time (FIDO:
    in that many optimisation slots) and its maps are resized to ``mask_size``. The rows of
    ``left_out`` (``load_batch``) get NaN maps and an error row."""
    result = ShardResult()
    n = len(rows)
    for name, spec in methods.items():
        result.maps[name] = {m: np.full((n, mask_size, mask_size), np.nan, np.float32)
                             for m in spec.map_names}
    where = resolve_device(device)
    module = model.on(where, compile_model)
    ok, images = load_batch(root, rows, model.input_size, result, limits, model.resize, left_out)
    if images is None:
        return result
    images = images.to(where)
    probs = class_probabilities(module, images, max(batch_size, CLASSIFY_BATCH))
    top_p, top_k = probs.topk(min(5, probs.shape[1]), dim=1)
    targets, sources = choose_targets([rows[i] for i in ok], top_k[:, 0], target)
    seeds = [image_seed(seed, str(rows[i]["image_id"])) for i in ok]
    for name, spec in methods.items():
        began = time.perf_counter()
        with spec.build(model.on(where, compile_model, spec.reads_layers)) as method:
            out = method.attribute(images, targets.to(where), seeds, batch_size, mask_size)
        seconds = (time.perf_counter() - began) / len(ok)
        for map_name in spec.map_names:
            result.maps[name][map_name][ok] = out.maps[map_name].float().cpu().numpy()
        if out.rows:
            result.rows.setdefault(spec.table, []).extend(
                {**{k: v for k, v in row.items() if k != "image"}, "method": name,
                 "image_id": rows[ok[row["image"]]]["image_id"]} for row in out.rows)
        for j, i in enumerate(ok):
            label = int(targets[j])
            result.predictions.append({
                "image_id": rows[i]["image_id"], "method": name, "kind": spec.kind,
                "target": label, "target_source": sources[j],
                "target_name": model.class_names[label], "target_prob": float(probs[j, label]),
                "top5": top_k[j].tolist(), "top5_prob": top_p[j].tolist(),
                "scalars": {k: float(v[j]) for k, v in out.scalars.items()},
                "seconds": seconds,
            })
    return result


def choose_targets(rows: Sequence[dict], predicted: torch.Tensor, mode: str
                   ) -> tuple[torch.Tensor, list[str]]:
    """The class each image's maps explain and where it came from: the top-1 class, or with
    ``mode == "label"`` the manifest's label in the model's classes where the row has one (the
    original FIDO explained the ground truth); unlabelled rows fall back to the top-1."""
    if mode not in TARGETS:
        raise ValueError(f"unknown target {mode!r}; expected one of {', '.join(TARGETS)}")
    targets, sources = predicted.clone().cpu(), ["predicted"] * len(rows)
    if mode == "label":
        for j, row in enumerate(rows):
            label = row.get("model_label")
            if label is not None and not (isinstance(label, float) and math.isnan(label)):
                targets[j], sources[j] = int(label), "label"
    return targets, sources
