"""A manifest row's picture as the analysis stages need it: decoded as explain decodes it, its
size before any shrinking (boxes and crops are reported in original pixels), and the part of
it the model sees."""

from __future__ import annotations

from fidoflow.pipeline.imaging.decode import crop_box, decode_image
from PIL import Image

from .config import RunConfig

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def decode_row(config: RunConfig, row: dict, min_side: int) -> Image.Image:
    """The picture of a manifest row, with the run's decode limits; decoders that can shrink
    (JPEG DCT scaling) keep both sides at least ``min_side``."""
    return decode_image(config.archive_root / str(row["path"]), config.decode_limits,
                        min_size=(min_side, min_side))


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
