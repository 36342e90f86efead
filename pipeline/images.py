"""Decoding image files and turning them into model-sized pixel tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class DecodeError(Exception):
    """An image file that cannot become an RGB picture."""


def decode_image(path: Path) -> Image.Image:
    """Open ``path`` as an RGB image with its EXIF orientation applied."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def to_tensor(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize the whole image (no crop, so masks map back to every pixel) to (3, H, W) in [0, 1]."""
    resized = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
