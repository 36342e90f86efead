"""A picture as the analysis stages need it: decoded as explain decodes it, its size before
any shrinking (boxes and crops are reported in original pixels), the part of it the model sees,
and the model input made from it.

The re-classify and evaluate stages prepare their images with ``prepare_picture``; re-classify
also keeps a working copy (``work``) that its crops are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from fidoflow.pipeline.imaging.decode import DecodeLimits, crop_box, decode_image, to_tensor

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Picture:
    """One image made ready for an analysis stage: its map row within the shard and manifest
    row, the model input, where the model's view lies in original pixels (the ground-truth
    boxes' frame), and for re-classification the working picture the crops are cut from
    (``work``; ``work_view``: the model's part of it; ``scale``: original pixels per working
    pixel, x and y)."""

    index: int
    row: dict
    model_input: torch.Tensor
    view: Box
    work: torch.Tensor | None = None
    work_view: Box | None = None
    scale: tuple[float, float] = (1.0, 1.0)


def decode_picture(path: Path, limits: DecodeLimits, min_side: int) -> Image.Image:
    """The picture at ``path``, within the decode limits; decoders that can shrink (JPEG DCT
    scaling) keep both sides at least ``min_side``."""
    return decode_image(path, limits, min_size=(min_side, min_side))


def original_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of a decoded picture before the decoder shrank it."""
    return img.info["original_size"]


def view_box(picture_size: tuple[int, int], input_size: tuple[int, int], mode: str) -> Box:
    """The part of a picture (width, height) that a model with ``input_size`` and resize
    ``mode`` sees: the centre crop for ``crop``, all of it for ``squash``."""
    if mode == "crop":
        x0, y0, x1, y1 = crop_box(picture_size, input_size)
        return float(x0), float(y0), float(x1), float(y1)
    return 0.0, 0.0, float(picture_size[0]), float(picture_size[1])


def shrink_to_side(img: Image.Image, side: int) -> Image.Image:
    """The picture with its shorter side at most ``side`` (aspect kept; never enlarged): the
    resolution at which even the smallest crop keeps the model input's pixels."""
    w, h = img.size
    if min(w, h) <= side:
        return img
    scale = side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.BILINEAR, reducing_gap=2.0)


def prepare_picture(index: int, row: dict, path: Path, limits: DecodeLimits,
                    input_size: tuple[int, int], resize: str, min_side: int,
                    work_side: int | None = None) -> Picture:
    """Decode ``row``'s picture with both sides at least ``min_side``; with ``work_side`` also
    the working picture, shrunk to that shorter side, that crops are cut from."""
    img = decode_picture(path, limits, min_side)
    width, height = original_size(img)
    model_input = to_tensor(img, input_size, resize)
    # the decoded picture may have been shrunk: its view, scaled to original pixels
    rx, ry = width / img.size[0], height / img.size[1]
    vx0, vy0, vx1, vy1 = view_box(img.size, input_size, resize)
    view = (vx0 * rx, vy0 * ry, vx1 * rx, vy1 * ry)
    if work_side is None:
        return Picture(index, row, model_input, view)
    work = shrink_to_side(img, work_side)
    return Picture(index, row, model_input, view, to_tensor(work, (work.size[1], work.size[0])),
                   view_box(work.size, input_size, resize),
                   (width / work.size[0], height / work.size[1]))
