"""Decoding image files robustly and turning them into model-sized pixel tensors.

``decode_image`` turns any file Pillow can read into an 8-bit RGB picture as it is meant to be
seen: EXIF orientation applied, alpha composited on white, 16-bit and float pixels scaled (not
clipped) to 0..255, CMYK through its ICC profile when it has one, the first frame of animations.
Very large pictures are shrunk while decoding (JPEG DCT scaling via ``Image.draft``, then a
resize) to stay under a pixel cap; pictures beyond a decompression-bomb limit are refused before
any pixel is decoded. Every failure is a ``DecodeError`` subclass whose class name is the error
type written to the errors table.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

# Pillow decodes what it can: these are looked for in folders (a file whose suffix is listed
# but that Pillow cannot read becomes an error row, never a silent skip).
DECODABLE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib",
                      ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
                      ".jp2", ".j2k", ".jpx", ".avif", ".psd", ".pcx", ".sgi", ".im", ".qoi")
# Image formats a field may hand over that Pillow cannot decode (reported as UnsupportedFormat).
UNSUPPORTED_SUFFIXES = (".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".cr3", ".nef",
                        ".arw", ".orf", ".rw2", ".raf", ".raw", ".exr", ".hdr")
IMAGE_SUFFIXES = DECODABLE_SUFFIXES + UNSUPPORTED_SUFFIXES

DEFAULT_MAX_PIXELS = 40_000_000  # decoded pictures are shrunk below this many pixels
DEFAULT_BOMB_PIXELS = 2 * 89_478_485  # Pillow's own refusal threshold (2 x MAX_IMAGE_PIXELS)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white

# A truncated file is an error, never half a picture padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class DecodeError(Exception):
    """An image file that cannot become an RGB picture; the subclass name is the error type."""


class MissingFile(DecodeError):
    """The file is not there (or cannot be opened)."""


class EmptyFile(DecodeError):
    """The file has zero bytes."""


class NotAnImage(DecodeError):
    """The bytes are no image format Pillow knows (e.g. a text file named .jpg)."""


class UnsupportedFormat(DecodeError):
    """A known image format Pillow cannot decode here (HEIC, RAW, SVG, ...)."""


class UnsupportedMode(DecodeError):
    """A pixel mode with no sensible RGB rendering (e.g. LAB without a profile)."""


class TruncatedImage(DecodeError):
    """The file ends before the picture does."""


class DecompressionBomb(DecodeError):
    """More pixels than the configured limit: refused before decoding."""


class CorruptImage(DecodeError):
    """Any other failure while decoding the pixels."""


@dataclass(frozen=True)
class DecodeLimits:
    """``max_pixels``: decoded pictures are shrunk under it; ``bomb_pixels``: refused above it."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    bomb_pixels: int = DEFAULT_BOMB_PIXELS


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8); 1 when absent or unreadable."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - corrupt EXIF blocks are common in camera-trap files
        return 1
    return value if value in range(1, 9) else 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. with the EXIF orientation applied; header only."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)


def _allow_pixels(limit: int) -> None:
    """Raise Pillow's own bomb threshold when the configured limit is above it."""
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and limit > 2 * pillow:
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1


def _draft_shift(w: int, h: int, max_pixels: int, min_size: tuple[int, int] | None) -> int:
    """log2 of the JPEG DCT scale (0..3): the smallest one under the cap, or the largest one
    that keeps both sides at least ``min_size`` (whichever shrinks more)."""
    shift = 0
    while shift < 3 and (w >> shift) * (h >> shift) > max_pixels:
        shift += 1
    if min_size is not None:
        need = max(min_size)
        while shift < 3 and min(w, h) >> (shift + 1) >= need:
            shift += 1
    return shift


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, scaling high-bit-depth pixels over their full range."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise UnsupportedMode(f"mode {mode} with shape {arr.shape}")
        arr = arr.astype(np.float64)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            arr = _stretch(arr)  # 32-bit integers: their own range
        else:
            arr = arr / 257.0  # 0..65535 -> 0..255, so white stays white
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0  # the usual [0, 1] float picture
        elif not (lo >= 0.0 and hi <= 255.0):
            arr = _stretch(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise UnsupportedMode(f"mode {mode}: {exc}") from exc


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK through the embedded ICC profile to sRGB when there is one, else Pillow's formula."""
    profile = img.info.get("icc_profile")
    if profile:
        try:
            import io

            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except Exception:  # noqa: BLE001, S110 - a broken profile: the naive conversion
            pass
    return img.convert("RGB")


def decode_image(path: Path, limits: DecodeLimits | None = None,
                 min_size: tuple[int, int] | None = None,
                 background: tuple[int, int, int] = BACKGROUND,
                 data: bytes | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB picture, oriented as displayed, at most ``max_pixels``.

    ``min_size`` (height, width), when given, lets JPEGs decode at 1/2, 1/4 or 1/8 scale as
    long as both sides stay at least that large (e.g. twice a model's input: much faster).
    ``img.info["original_size"]`` holds the (width, height) before shrinking, orientation applied,
    so boxes given in original pixels can be scaled. ``data``: the file's bytes, already read
    (the caller hashed them); ``path`` then only names it. Raises a ``DecodeError`` subclass.
    """
    limits = limits or DecodeLimits()
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise EmptyFile("the file has zero bytes")
    except OSError as exc:
        raise MissingFile(f"{type(exc).__name__}: {exc}") from exc
    _allow_pixels(limits.bomb_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bomb, palette and EXIF warnings: handled here
        try:
            img = Image.open(path if data is None else io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise DecompressionBomb(str(exc)) from exc
        except Image.UnidentifiedImageError as exc:
            kind = UnsupportedFormat if path.suffix.lower() in UNSUPPORTED_SUFFIXES else NotAnImage
            raise kind(f"not a picture Pillow can identify ({path.suffix or 'no suffix'})") from exc
        except FileNotFoundError as exc:
            raise MissingFile(str(exc)) from exc
        except Exception as exc:
            raise CorruptImage(f"{type(exc).__name__}: {exc}") from exc
        with img:
            return _decode_open(img, limits, min_size, background)


def _decode_open(img: Image.Image, limits: DecodeLimits, min_size: tuple[int, int] | None,
                 background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w * h > limits.bomb_pixels:
        raise DecompressionBomb(f"{w}x{h} = {w * h} pixels exceeds the limit of "
                                f"{limits.bomb_pixels} (--max-image-pixels)")
    orientation = exif_orientation(img)
    original = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animations: the first frame
        if img.format == "JPEG":
            shift = _draft_shift(w, h, limits.max_pixels, min_size)
            if shift:
                img.draft(None, (max(1, w >> shift), max(1, h >> shift)))
        img.load()
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            raise TruncatedImage(text) from exc
        raise CorruptImage(f"{type(exc).__name__}: {text}") from exc
    except DecodeError:
        raise
    except Exception as exc:  # SyntaxError, ValueError, struct.error, ... from broken files
        raise CorruptImage(f"{type(exc).__name__}: {exc}") from exc
    try:
        out = _to_rgb(img, background)
        if orientation in _TRANSPOSE:
            out = out.transpose(_TRANSPOSE[orientation])
        out = shrink_to(out, limits.max_pixels)
    except DecodeError:
        raise
    except Exception as exc:
        raise CorruptImage(f"{type(exc).__name__}: {exc}") from exc
    if out is img:
        out = img.copy()  # the caller's picture outlives the open file
    out.info = {"original_size": original}
    return out


def shrink_to(img: Image.Image, max_pixels: int) -> Image.Image:
    """``img`` resized (aspect kept) to at most ``max_pixels`` pixels; unchanged when under."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


RESIZE_MODES = ("squash", "crop")


def to_tensor(img: Image.Image, size: tuple[int, int], mode: str = "squash") -> torch.Tensor:
    """(3, H, W) in [0, 1] for a model whose input is ``size`` = (H, W).

    ``squash`` (default) resizes the whole picture, so a mask maps back to every pixel;
    ``crop`` scales the shorter side to fit and keeps the centre (``crop_box`` tells which part).
    """
    if mode == "crop":
        img = img.crop(crop_box(img.size, size))
    elif mode != "squash":
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    resized = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def crop_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred (x0, y0, x1, y1) of an image (width, height) with the aspect of ``size`` (H, W)."""
    w, h = image_size
    target = size[1] / size[0]
    if w / h > target:
        cw, ch = max(1, round(h * target)), h
    else:
        cw, ch = w, max(1, round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch
