"""Explaining one shard: decode, classify, optimise masks for many images at once.

Works on file paths and tensors and returns plain records and arrays; where they are stored is the
caller's business.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .device import resolve_device
from .fido import Fido, FidoConfig
from .images import DecodeLimits, decode_image, to_tensor
from .models import LoadedModel
from .readers.common import check_path


def image_seed(run_seed: int, image_id: str) -> int:
    """A stable per-image seed: same run seed and image → same masks, whatever the batch."""
    digest = hashlib.sha256(f"{run_seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class ShardResult:
    """Per method: prediction records and (n_rows, h, w) maps with NaN rows for failed images."""

    predictions: list[dict[str, object]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def error_record(row: dict, stage: str, error_type: str, message: str) -> dict[str, object]:
    return {"image_id": row["image_id"], "path": row["path"], "stage": stage,
            "error_type": error_type, "message": message}


def load_batch(
    root: Path, rows: Sequence[dict], size: tuple[int, int], result: ShardResult,
    limits: DecodeLimits | None = None, resize: str = "squash",
) -> tuple[list[int], torch.Tensor | None]:
    """Decode ``rows``; failures become error records. Returns the indices that decoded.

    Rows the manifest refused (``manifest_error``) are reported with stage "manifest" and
    never opened; every other failure, of any kind, is a "decode" error of that image alone.
    JPEGs decode at a reduced DCT scale while both sides stay at least twice the model input.
    """
    ok, tensors = [], []
    root_real = os.path.realpath(root)
    for i, row in enumerate(rows):
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
            img = decode_image(Path(real), limits, min_size=(2 * size[0], 2 * size[1]))
            tensors.append(to_tensor(img, size, resize))
            ok.append(i)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a shard
            result.errors.append(error_record(row, "decode", type(exc).__name__, str(exc)))
    return ok, (torch.stack(tensors) if tensors else None)


def explain_rows(
    model: LoadedModel, root: Path, rows: Sequence[dict], configs: dict[str, FidoConfig],
    seed: int, batch_size: int = 8, device: str = "cpu", limits: DecodeLimits | None = None,
    compile_model: bool = False,
) -> ShardResult:
    """Masks of every method for ``rows`` (manifest records): the shard's images are decoded once
    and stream through ``batch_size`` optimisation slots (a finished image's slot takes the next)."""
    result = ShardResult()
    n = len(rows)
    for method, cfg in configs.items():
        result.maps[method] = {
            name: np.full((n, cfg.mask_size, cfg.mask_size), np.nan, np.float32)
            for name in ("joint", "ssr", "sdr")
        }
    target = resolve_device(device)
    module = model.on(target, compile_model)
    ok, images = load_batch(root, rows, model.input_size, result, limits, model.resize)
    if images is None:
        return result
    images = images.to(target)
    with torch.no_grad():
        probs = torch.cat([module(images[i:i + batch_size]).float().softmax(dim=1)
                           for i in range(0, len(images), batch_size)])
    top_p, top_k = probs.topk(min(5, probs.shape[1]), dim=1)
    seeds = [image_seed(seed, str(rows[i]["image_id"])) for i in ok]
    for method, cfg in configs.items():
        began = time.perf_counter()
        with Fido(module, cfg) as fido:
            out = fido.attribute(images, top_k[:, 0], seeds, slots=batch_size)
        seconds = (time.perf_counter() - began) / len(ok)
        for name in ("joint", "ssr", "sdr"):
            result.maps[method][name][ok] = getattr(out, name).float().cpu().numpy()
        for j, i in enumerate(ok):
            label = int(top_k[j, 0])
            result.predictions.append({
                "image_id": rows[i]["image_id"], "method": method, "target": label,
                "target_name": model.class_names[label],
                "target_prob": float(top_p[j, 0]),
                "top5": top_k[j].tolist(), "top5_prob": top_p[j].tolist(),
                "p_ssr": float(out.p_ssr[j]), "p_sdr": float(out.p_sdr[j]),
                "iterations": int(out.extras["iterations"][j]),
                "seconds": seconds,
            })
    return result
