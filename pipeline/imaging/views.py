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
    region: Box | None = None  # the crop the row is explained on, original pixels


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


CROP = ("crop_x0", "crop_y0", "crop_x1", "crop_y1")
NO_SHRINK = 1 << 20  # a min_side no JPEG draft scaling goes under: crops keep every pixel


def crop_region(row: dict, original: tuple[int, int]) -> Box | None:
    """The square a row is explained on, in original pixels (None: the whole picture): the
    tightest square around its crop box (a detection, an annotated box), shifted inside and
    clipped to the picture (MegaDetector's own cropping). ``original``: (width, height)."""
    values = [row.get(c) for c in CROP]
    if any(v is None for v in values):
        return None
    width, height = original
    x0, y0, x1, y1 = values
    if row.get("crop_units") == "fraction":
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    side = min(max(x1 - x0, y1 - y0, 1.0), width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return left, top, left + side, top + side


def decode_row(path: Path, row: dict, limits: DecodeLimits, min_side: int,
               data: bytes | None = None) -> tuple[Image.Image, Box | None]:
    """A row's picture as the model's stages see it: the decoded file (shrunk no smaller than
    ``min_side``), or the square crop of it the row names; and that crop in original pixels.
    ``img.info["original_size"]`` stays the file's own size."""
    cropped = all(row.get(c) is not None for c in CROP)  # as crop_region decides
    img = decode_image(path, limits, min_size=(NO_SHRINK,) * 2 if cropped else
                       (min_side, min_side), data=data)
    region = crop_region(row, original_size(img)) if cropped else None
    if region is None:
        return img, None
    original = original_size(img)
    rx, ry = img.size[0] / original[0], img.size[1] / original[1]
    x0, y0, x1, y1 = region
    piece = img.crop((round(x0 * rx), round(y0 * ry), max(round(x1 * rx), round(x0 * rx) + 1),
                      max(round(y1 * ry), round(y0 * ry) + 1)))
    piece.info = {"original_size": (round(x1 - x0), round(y1 - y0)), "frame_size": original}
    return piece, region


def to_original(box: Box, region: Box | None, scale: tuple[float, float]) -> Box:
    """A box in a decoded picture's pixels (``scale``: original pixels per decoded pixel of the
    picture or crop) in the file's original pixels."""
    sx, sy = scale
    ox, oy = (region[0], region[1]) if region is not None else (0.0, 0.0)
    x0, y0, x1, y1 = box
    return ox + x0 * sx, oy + y0 * sy, ox + x1 * sx, oy + y1 * sy


def prepare_picture(index: int, row: dict, path: Path, limits: DecodeLimits,
                    input_size: tuple[int, int], resize: str, min_side: int,
                    work_side: int | None = None) -> Picture:
    """Decode ``row``'s picture (or its crop) with both sides at least ``min_side``; with
    ``work_side`` also the working picture, shrunk to that shorter side, that crops are cut
    from. Views and scales are in the file's original pixels (boxes' and parts' frame)."""
    img, region = decode_row(path, row, limits, min_side)
    width, height = original_size(img)
    model_input = to_tensor(img, input_size, resize)
    # the decoded picture may have been shrunk: its view, scaled to original pixels
    rx, ry = width / img.size[0], height / img.size[1]
    view = to_original(view_box(img.size, input_size, resize), region, (rx, ry))
    if work_side is None:
        return Picture(index, row, model_input, view)
    work = shrink_to_side(img, work_side)
    return Picture(index, row, model_input, view, to_tensor(work, (work.size[1], work.size[0])),
                   view_box(work.size, input_size, resize),
                   (width / work.size[0], height / work.size[1]), region)
