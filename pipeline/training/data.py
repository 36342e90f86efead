"""Training data: manifest rows -> decoded uint8 tensors, the train/validation/test split, and
augmentation in torch (random crop and flip through one ``grid_sample``; no torchvision).

Images are decoded once, resized to the network's input, and kept in memory as uint8
(150 KB per 224² image: CUB's 6k training images take ~0.9 GB).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ..imaging.decode import DecodeError, DecodeLimits, decode_image, to_tensor


@dataclass
class ImageTensors:
    """Images (N, 3, H, W) uint8, labels (N,) int64 and the rows' image ids."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageTensors:
        ids = tuple(self.ids[i] for i in index.tolist()) if self.ids else ()
        return ImageTensors(self.images[index], self.labels[index], ids)


@dataclass
class TrainData:
    """What a training run sees: train, validation and (optional) test images, class names."""

    train: ImageTensors
    val: ImageTensors
    test: ImageTensors | None
    class_names: list[str]
    skipped: int = 0  # rows without a label or whose image would not decode


def in_validation(image_id: str, fraction: float) -> bool:
    """A fixed, content-free choice: the same image is held out whatever else the archive holds."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def split_frame(frame: pd.DataFrame, val_fraction: float) -> dict[str, pd.DataFrame]:
    """Usable labelled rows as ``train``/``val``/``test``: the archive's test split (when it has
    one) is kept for the end; validation is ``val_fraction`` of its training rows, by image id."""
    usable = frame[frame["manifest_error"].isna() & frame["label_name"].notna()]
    has_split = usable["split"].notna().any()
    train = usable[usable["split"] == "train"] if has_split else usable
    test = usable[usable["split"] == "test"] if has_split else usable.iloc[:0]
    held = train["image_id"].map(lambda i: in_validation(str(i), val_fraction)).astype(bool)
    if held.all() or not held.any():
        raise ValueError(f"a validation fraction of {val_fraction} leaves no training or no "
                         f"validation images among {len(train)}")
    return {"train": train[~held], "val": train[held], "test": test}


def decode_rows(rows: pd.DataFrame, root: Path, classes: list[str], size: tuple[int, int],
                resize: str = "squash", limits: DecodeLimits | None = None,
                threads: int = 4, unknown: int | None = None) -> tuple[ImageTensors, int]:
    """Decode ``rows`` (labels by name into ``classes``); returns the tensors and how many rows
    were skipped (an image that would not decode, or a label outside ``classes`` unless
    ``unknown`` is the label such rows get)."""
    index = {name: i for i, name in enumerate(classes)}

    def one(row: tuple[str, str, str]) -> tuple[torch.Tensor, int, str] | None:
        path, name, image_id = row
        label = index.get(name, unknown)
        if label is None:
            return None
        try:
            img = decode_image(root / path, limits, min_size=size)
        except DecodeError:
            return None
        return (to_tensor(img, size, resize) * 255).round().to(torch.uint8), label, image_id

    pairs = list(zip(rows["path"].astype(str), rows["label_name"].astype(str),
                     rows["image_id"].astype(str), strict=True))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        decoded = [d for d in pool.map(one, pairs) if d is not None]
    images = (torch.stack([d[0] for d in decoded]) if decoded
              else torch.zeros(0, 3, *size, dtype=torch.uint8))
    labels = torch.tensor([d[1] for d in decoded], dtype=torch.long)
    return ImageTensors(images, labels, tuple(d[2] for d in decoded)), len(pairs) - len(decoded)


def load_frame(frame: pd.DataFrame, root: Path, size: tuple[int, int], val_fraction: float,
               resize: str = "squash", limits: DecodeLimits | None = None,
               threads: int = 4) -> TrainData:
    """Manifest rows of an archive -> TrainData; classes are the training rows' label names,
    sorted."""
    parts = split_frame(frame, val_fraction)
    classes = sorted(set(parts["train"]["label_name"].astype(str)))
    if len(classes) < 2:
        raise ValueError(f"training needs at least two classes, the archive's training rows "
                         f"have {len(classes)}")
    loaded, skipped = {}, 0
    for name, rows in parts.items():
        loaded[name], lost = decode_rows(rows, root, classes, size, resize, limits, threads)
        skipped += lost
    if len(loaded["train"]) == 0 or len(loaded["val"]) == 0:
        raise ValueError("no training or no validation image could be decoded")
    test = loaded["test"] if len(loaded["test"]) else None
    return TrainData(loaded["train"], loaded["val"], test, classes,
                     skipped + len(frame) - sum(len(p) for p in parts.values()))


def augment(images: torch.Tensor, crop_scale: float, flip: bool) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1], each image a random square-ish crop of side
    ``crop_scale``..1 of the image (resized back) and mirrored with probability 1/2.

    Draws from torch's global random stream (saved in checkpoints, so a resumed run repeats it).
    """
    x = images.float() / 255
    if crop_scale >= 1.0 and not flip:
        return x
    n = len(x)
    scale = crop_scale + (1.0 - crop_scale) * torch.rand(n)
    shift = (1.0 - scale)[:, None] * (2 * torch.rand(n, 2) - 1)
    mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * mirror
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
