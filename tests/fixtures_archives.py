"""Small generated archives of every format, and files of every pixel mode and broken kind."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

RNG = np.random.default_rng(7)


def photo(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    """A smooth colourful RGB picture (survives JPEG well)."""
    y, x = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    pixels = np.stack([
        127 + 100 * np.sin(x / 7 + phase), 127 + 100 * np.cos(y / 5 + phase),
        127 + 100 * np.sin((x + y) / 9 + phase)], axis=-1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


# --- pixel modes: (builder, expected check) ------------------------------------------------

def gradient16(width: int = 256, height: int = 4) -> np.ndarray:
    return np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (height, 1))


def write_mode_file(kind: str, folder: Path) -> Path:
    """One file per pixel mode the decoder must render correctly."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "L":
        return save(Image.new("L", (20, 10), 128), folder / "grey.png")
    if kind == "1":
        img = Image.new("1", (20, 10), 0)
        img.paste(1, (0, 0, 10, 10))
        return save(img, folder / "bilevel.png")
    if kind == "RGBA":
        img = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
        img.paste((0, 0, 255, 0), (10, 0, 20, 10))  # right half fully transparent
        return save(img, folder / "rgba.png")
    if kind == "LA":
        img = Image.new("LA", (20, 10), (0, 255))
        img.paste((0, 0), (10, 0, 20, 10))
        return save(img, folder / "la.png")
    if kind == "P":
        img = Image.new("P", (20, 10), 1)
        img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
        img.paste(0, (10, 0, 20, 10))  # index 0 is transparent
        return save(img, folder / "palette.png", transparency=0)
    if kind == "CMYK":
        img = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red in naive CMYK
        return save(img, folder / "cmyk.jpg", quality=95)
    if kind == "I;16":
        return save(Image.fromarray(gradient16()), folder / "gradient16.png")
    if kind == "I;16B":
        big = gradient16().astype(">u2")
        return save(Image.fromarray(big), folder / "gradient16b.tif")
    if kind == "I":
        return save(Image.fromarray(gradient16().astype(np.int32)), folder / "gradient32.tif")
    if kind == "F":
        arr = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1))
        return save(Image.fromarray(arr), folder / "float01.tif")
    if kind == "F-wide":
        arr = np.tile(np.linspace(-5.0, 7.0, 256, dtype=np.float32), (4, 1))
        return save(Image.fromarray(arr), folder / "float-wide.tif")
    if kind == "exif":
        return write_exif_rotated(folder / "rotated.jpg")
    if kind == "gif":
        return write_animation(folder / "anim.gif")
    if kind == "webp":
        return write_animation(folder / "anim.webp")
    raise ValueError(kind)


def write_exif_rotated(path: Path, orientation: int = 6) -> Path:
    """Stored 40x20 (wide) with a red top-left corner; orientation 6 displays it 20x40."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(img, path, exif=exif.tobytes(), quality=95)


def write_animation(path: Path) -> Path:
    """Two frames: red first, green second."""
    frames = [Image.new("RGB", (16, 12), (255, 0, 0)), Image.new("RGB", (16, 12), (0, 255, 0))]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if path.suffix == ".webp" else {}))
    return path


# --- broken files ---------------------------------------------------------------------------

def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` and holds (almost) no pixels: a bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    data += chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    photo(64, 48).save(buffer, "JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    return path


BROKEN = {  # name -> (writer, expected error type)
    "truncated.jpg": (truncated_jpeg, "TruncatedImage"),
    "truncated.png": (truncated_png, "TruncatedImage"),
    "empty.jpg": (lambda p: (p.write_bytes(b""), p)[1], "EmptyFile"),
    "notes.jpg": (lambda p: (p.write_text("this is text, not a picture\n"), p)[1], "NotAnImage"),
    "phone.heic": (lambda p: (p.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64), p)[1],
                   "UnsupportedFormat"),
    "bomb.png": (lambda p: png_header_only(p, 20000, 20000), "DecompressionBomb"),
}


def dirty_folder(root: Path, outside: Path | None = None) -> dict[str, str]:
    """Good photos, one file of every broken kind, odd modes, and a link out of the root.

    Returns the expected error type per relative path (good files are absent)."""
    root.mkdir(parents=True, exist_ok=True)
    save(photo(64, 48, 1), root / "good1.jpg", quality=90)
    save(photo(48, 64, 2), root / "sub" / "good2.png")
    write_exif_rotated(root / "sub" / "rotated.jpg")
    write_animation(root / "anim.gif")
    save(Image.fromarray(gradient16(64, 32)), root / "deep16.png")
    cmyk = Image.new("CMYK", (32, 24), (0, 200, 200, 10))
    save(cmyk, root / "print.jpg")
    img = photo(40, 30, 3).convert("RGBA")
    img.putalpha(128)
    save(img, root / "alpha.png")
    expected = {}
    for name, (writer, error) in BROKEN.items():
        writer(root / "broken" / name)
        expected[f"broken/{name}"] = error
    if outside is not None:
        save(photo(32, 32, 4), outside / "secret.jpg")
        os.symlink(outside / "secret.jpg", root / "link-out.jpg")
        expected["link-out.jpg"] = "UnsafePath"
    (root / "README.txt").write_text("not an image, not listed\n")
    return expected


# --- archives -------------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
CUB_PARTS = ["back", "beak", "left eye"]


def cub_tree(root: Path) -> Path:
    """CUB-200-2011 shape: 2 classes x 2 images, boxes, splits and parts."""
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    image_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        for k in range(2):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}.jpg"
            save(photo(60, 40, image_id), root / "images" / rel, quality=90)
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c}")
            lines["split"].append(f"{image_id} {1 if k == 0 else 0}")
            lines["boxes"].append(f"{image_id} {5.0 + image_id} 6.0 20.0 10.5")
            for p in range(1, len(CUB_PARTS) + 1):
                visible = 0 if (p == 3 and image_id == 2) else 1
                x, y = (10.0 * p, 5.0 * p) if visible else (0.0, 0.0)
                lines["locs"].append(f"{image_id} {p} {x} {y} {visible}")
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "classes.txt").write_text(
        "\n".join(f"{i} {n}" for i, n in enumerate(CUB_CLASSES, 1)) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "parts").mkdir()
    (root / "parts" / "parts.txt").write_text(
        "\n".join(f"{i} {n}" for i, n in enumerate(CUB_PARTS, 1)) + "\n")
    (root / "parts" / "part_locs.txt").write_text("\n".join(lines["locs"]) + "\n")
    return root


def coco_archive(root: Path, name: str = "traps.json") -> Path:
    """A LILA-style camera-trap JSON: a deer (majority over a fox), an empty frame, an image
    without annotation, and an entry whose file is missing. Returns the JSON's path."""
    for i in range(3):
        save(photo(50, 40, 10 + i), root / "loc1" / f"img{i}.jpg", quality=90)
    data = {
        "info": {"version": "1.0"},
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "deer"},
                       {"id": 5, "name": "fox"}],
        "images": [
            {"id": "a", "file_name": "loc1/img0.jpg", "width": 50, "height": 40,
             "seq_id": "s1", "location": 3, "datetime": "2020-05-01 10:00:00"},
            {"id": "b", "file_name": "loc1/img1.jpg", "width": 50, "height": 40, "seq_id": "s1"},
            {"id": "c", "file_name": "loc1/img2.jpg", "width": 50, "height": 40},
            {"id": "d", "file_name": "loc1/missing.jpg", "width": 50, "height": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": "a", "category_id": 5, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": "a", "category_id": 1},
            {"id": 3, "image_id": "a", "category_id": 1, "bbox": [10, 5, 20, 15]},
            {"id": 4, "image_id": "b", "category_id": 0},
        ],
    }
    path = root / name
    path.write_text(json.dumps(data))
    return path


def csv_manifest(root: Path, outside: Path) -> Path:
    """A CSV with good rows, x y w h boxes, and every unsafe or duplicate kind."""
    save(photo(30, 20, 1), root / "pics" / "a.jpg")
    save(photo(30, 20, 2), root / "pics" / "b.png")
    save(photo(30, 20, 5), root / "pics" / "c.jpg")
    save(photo(30, 20, 3), outside / "escape.jpg")
    rows = [
        {"path": "pics/a.jpg", "image_id": "A", "class_name": "cat", "split": "train",
         "x": 1, "y": 2, "w": 10, "h": 5},
        {"path": "pics/b.png", "image_id": "B", "class_name": "dog", "split": "test",
         "x": None, "y": None, "w": None, "h": None},
        {"path": f"../{outside.name}/escape.jpg", "image_id": "up", "class_name": "cat"},
        {"path": str(outside / "escape.jpg"), "image_id": "abs", "class_name": "cat"},
        {"path": "pics/a.jpg", "image_id": "A2", "class_name": "cat"},  # same file again
        {"path": "pics/c.jpg", "image_id": "A", "class_name": "dog"},  # id collision
        {"path": "pics/nope.jpg", "image_id": "gone", "class_name": "dog"},
    ]
    path = root / "list.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
