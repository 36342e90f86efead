"""A fine-grained benchmark with known answers: birds whose classes differ only by a wing patch.

``fine=True`` gives the 24 classes of FINE_CLASS_NAMES instead: the same 12 wing patches, each
with one of two crown colours, so classes differ by two small parts (the wing patch and the
crown cap on the head); ``part_ids`` then tells the parts apart (1 wing, 2 crown). ``tail=True``
(fine scenes with a third part) gives the 48 classes of TAIL_CLASS_NAMES: each fine class with
one of two colours of the tail's tip (part id 3). The default scenes are unchanged by these
options, and a three-part scene is its fine scene plus the tip: the crown and the tip draw
nothing from the random stream.

Every scene is drawn from its own random stream and the label is used only to colour the wing
patch, which is painted last; so rendering one scene with two labels changes pixels only inside
the patch, and the patch's pixel mask is the ground-truth discriminative region. The clutter
(textured background, blobs, twigs, birds with plain wings, loose patches in the class colours)
makes the classifier look at the patch *on a bird*, not at colours anywhere.

Boxes are (x0, y0, x1, y1) in pixel edges: pixel (row i, column j) covers [j, j+1) x [i, i+1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_SIZE = 96  # the classifier's training resolution; "small objects" keep this pixel scale
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "yellow": (0.96, 0.84, 0.12),
    "blue": (0.12, 0.32, 0.90),
    "white": (0.96, 0.96, 0.96),
    "magenta": (0.84, 0.18, 0.78),
    "cyan": (0.10, 0.80, 0.84),
}
PATTERNS = ("plain", "barred")
CLASS_NAMES = tuple(f"{c}_{p}" for c in PALETTE for p in PATTERNS)
CROWNS: dict[str, tuple[float, float, float]] = {
    "orange": (0.98, 0.52, 0.06),
    "green": (0.14, 0.68, 0.22),
}
FINE_CLASS_NAMES = tuple(f"{w}_{c}-crown" for w in CLASS_NAMES for c in CROWNS)
TAILS: dict[str, tuple[float, float, float]] = {
    "pink": (0.98, 0.62, 0.74),
    "teal": (0.02, 0.45, 0.42),
}
TAIL_CLASS_NAMES = tuple(f"{f}_{t}-tail" for f in FINE_CLASS_NAMES for t in TAILS)
WING, CROWN, TAIL = 1, 2, 3  # values of part_ids
DARK = np.array([0.08, 0.07, 0.06], dtype=np.float32)
BODY_SCALE = (0.15, 0.24)  # body semi-major axis / image side: the patch covers ~1-2.5 %


@dataclass
class Scene:
    """One image (3, H, W) in [0, 1], its label, the patch (mask and box) and the bird's box."""

    image: torch.Tensor
    label: int
    part_mask: torch.Tensor
    part_box: torch.Tensor
    object_box: torch.Tensor
    part_ids: torch.Tensor | None = None  # (H, W) uint8, fine scenes only: 1 wing, 2 crown, 3 tail
    points: dict[str, tuple[float, float]] | None = None  # CUB-named part centres (x, y)


@dataclass
class SyntheticSet:
    """N scenes stacked: images (N, 3, H, W), labels (N,), part masks (N, H, W), boxes (N, 4),
    and for fine scenes the part ids (N, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    part_masks: torch.Tensor
    part_boxes: torch.Tensor
    object_boxes: torch.Tensor
    class_names: tuple[str, ...]
    part_ids: torch.Tensor | None = None


class _Canvas:
    """A float image being painted with anti-aliased ellipses (coverage from a signed distance)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.img = np.zeros((3, size, size), dtype=np.float32)

    def ellipse(self, cx: float, cy: float, a: float, b: float, angle: float):
        """Window slices, coverage alpha and ellipse-frame coordinates (u, v) of one ellipse."""
        r = max(a, b) + 2.0
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, self.size)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, self.size)
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-6
        grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / rho
        alpha = np.clip(0.5 - (rho - 1.0) / np.maximum(grad, 1e-6), 0.0, 1.0)
        return (slice(y0, y1), slice(x0, x1)), alpha, u, v

    def paint(self, win, alpha: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
        colour = colour.reshape(3, 1, 1) if colour.ndim == 1 else colour
        region = self.img[:, win[0], win[1]]
        region += (opacity * alpha) * (colour - region)


def _rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _muted(rng: np.random.Generator, sat=(0.1, 0.45), val=(0.3, 0.75)) -> np.ndarray:
    """A natural-looking colour: low saturation, medium value, any hue."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _background(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    """Gradient, fractal colour noise, blobs and twigs; sizes follow ``scale``, counts the area."""
    import cv2

    n = canvas.size
    clutter = (n / scale) ** 2
    c0, c1, theta = _muted(rng), _muted(rng), rng.uniform(0, 2 * math.pi)
    t = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    ramp = np.clip(0.5 + math.cos(theta) * t[None, :] + math.sin(theta) * t[:, None], 0, 1)
    canvas.img[:] = c0[:, None, None] + (c1 - c0)[:, None, None] * ramp
    for cells, amp in ((3, 0.12), (7, 0.07), (16, 0.04)):
        grid = max(2, round(cells * n / scale))
        lum = rng.normal(0, amp, (grid, grid)).astype(np.float32)
        chroma = rng.normal(0, amp / 3, (3, grid, grid)).astype(np.float32)
        noise = (lum + chroma).transpose(1, 2, 0)
        canvas.img += cv2.resize(noise, (n, n), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
    for _ in range(int(rng.integers(4, 10) * clutter)):
        a = rng.uniform(0.05, 0.25) * scale
        win, alpha, _, _ = canvas.ellipse(*rng.uniform(0, n, 2), a, a * rng.uniform(0.3, 1.0),
                                          rng.uniform(0, math.pi))
        canvas.paint(win, alpha, _muted(rng), rng.uniform(0.4, 0.9))
    for _ in range(int(rng.integers(2, 6) * clutter)):
        win, alpha, _, _ = canvas.ellipse(*rng.uniform(0, n, 2), rng.uniform(0.15, 0.4) * scale,
                                          rng.uniform(0.6, 1.4), rng.uniform(0, math.pi))
        canvas.paint(win, alpha, _muted(rng, val=(0.1, 0.35)))


@dataclass
class _Bird:
    cx: float
    cy: float
    a: float
    b: float
    angle: float
    facing: float
    body: np.ndarray
    beak: np.ndarray
    part_period: float
    part_phase: float

    @staticmethod
    def draw(rng: np.random.Generator, cx: float, cy: float, a: float) -> _Bird:
        return _Bird(cx, cy, a, a * rng.uniform(0.55, 0.65), rng.uniform(-0.35, 0.35),
                     float(rng.choice([-1.0, 1.0])), _muted(rng),
                     _muted(rng, (0.3, 0.7), (0.3, 0.8)),
                     rng.uniform(0.5, 0.65), rng.uniform(0, 2 * math.pi))

    def at(self, du: float, dv: float) -> tuple[float, float]:
        """Image position of a point given in the body frame (u towards the head, v down)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = self.facing * du
        return self.cx + c * u - s * dv, self.cy + s * u + c * dv

    def paint_body(self, canvas: _Canvas, mask: np.ndarray) -> None:
        """Tail, legs, body (lighter belly), head, beak and eye; their union is OR-ed into mask."""
        a, b, f, ang = self.a, self.b, self.facing, self.angle
        rh = 0.55 * b
        parts = [
            (self.at(-1.05 * a, -0.15 * b), (0.55 * a, 0.22 * b), ang + f * 0.3, self.body * 0.7),
            (self.at(-0.2 * a, 1.2 * b), (0.05 * a, 0.35 * b), ang, DARK),
            (self.at(0.2 * a, 1.2 * b), (0.05 * a, 0.35 * b), ang, DARK),
            (self.at(0.0, 0.0), (a, b), ang, None),
            (self.at(0.85 * a, -0.6 * b), (rh, rh), 0.0, self.body),
            (self.at(0.85 * a + rh + 0.2 * b, -0.5 * b), (0.35 * b, 0.12 * b), ang, self.beak),
            (self.at(0.85 * a + 0.3 * rh, -0.6 * b - 0.15 * rh), (0.12 * b, 0.12 * b), 0.0, DARK),
        ]
        for (x, y), (pa, pb), angle, colour in parts:
            win, alpha, _, v = canvas.ellipse(x, y, pa, pb, angle)
            if colour is None:  # body: lighter towards the belly
                colour = np.clip(self.body[:, None, None] * (1.0 + 0.25 * (v / b)[None]), 0, 1)
            canvas.paint(win, alpha, colour)
            mask[win] |= alpha > 0

    def paint_part(self, canvas: _Canvas, colour: np.ndarray, barred: bool) -> tuple:
        """The wing patch in ``colour`` (optionally barred); returns its window and coverage."""
        x, y = self.at(-0.1 * self.a, -0.15 * self.b)
        return _patch(canvas, x, y, 0.5 * self.a, 0.45 * self.b, self.angle - self.facing * 0.1,
                      colour, barred, self.part_period, self.part_phase)

    def points(self) -> dict[str, tuple[float, float]]:
        """The centres of the bird's parts under CUB's names (pixel edges, x right, y down):
        the wing patch is the ``left wing``, the crown cap the ``crown``."""
        a, b = self.a, self.b
        rh = 0.55 * b
        return {"beak": self.at(0.85 * a + rh + 0.2 * b, -0.5 * b),
                "belly": self.at(0.0, 0.6 * b),
                "crown": self.at(0.85 * a, -0.6 * b - 0.6 * rh),
                "left eye": self.at(0.85 * a + 0.3 * rh, -0.6 * b - 0.15 * rh),
                "left leg": self.at(0.2 * a, 1.4 * b),
                "left wing": self.at(-0.1 * a, -0.15 * b),
                "tail": self.at(-1.05 * a, -0.15 * b)}

    def paint_tail_tip(self, canvas: _Canvas, colour: np.ndarray) -> tuple:
        """The far half of the tail (the part the body does not cover) in ``colour``; returns
        its window and coverage."""
        angle = self.angle + self.facing * 0.3  # the tail's axis, as paint_body draws it
        x, y = self.at(-1.05 * self.a, -0.15 * self.b)
        x -= self.facing * 0.3 * self.a * math.cos(angle)
        y -= self.facing * 0.3 * self.a * math.sin(angle)
        return _patch(canvas, x, y, 0.28 * self.a, 0.2 * self.b, angle, colour, False, 1.0, 0.0)

    def paint_crown(self, canvas: _Canvas, colour: np.ndarray) -> tuple:
        """A cap on top of the head in ``colour``; returns its window and coverage."""
        rh = 0.55 * self.b
        x, y = self.at(0.85 * self.a, -0.6 * self.b - 0.6 * rh)
        win, alpha, _, v = canvas.ellipse(x, y, 0.75 * rh, 0.42 * rh, self.angle)
        shade = np.clip(colour[:, None, None] * (1.0 - 0.1 * v / (0.42 * rh))[None], 0, 1)
        canvas.paint(win, alpha, shade)
        return win, alpha


def _patch(canvas: _Canvas, x: float, y: float, pa: float, pb: float, angle: float,
           colour: np.ndarray, barred: bool, period: float, phase: float) -> tuple:
    """A shaded elliptic patch, bars across its long axis if ``barred``: (window, coverage)."""
    win, alpha, u, v = canvas.ellipse(x, y, pa, pb, angle)
    fill = colour[:, None, None] * (1.0 - 0.12 * v / pb)[None]
    if barred:
        t = np.clip(0.5 + 1.5 * np.sin(2 * math.pi * u / (period * pa) + phase), 0, 1)[None]
        fill = fill * t + DARK[:, None, None] * (1 - t)
    canvas.paint(win, alpha, np.clip(fill, 0, 1))
    return win, alpha


def _class_spec(label: int) -> tuple[np.ndarray, bool]:
    name = CLASS_NAMES[label]
    colour, pattern = name.split("_")
    return np.array(PALETTE[colour], dtype=np.float32), pattern == "barred"


def _box(mask: np.ndarray) -> torch.Tensor:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)


def _place(rng: np.random.Generator, size: int, radius: float, avoid: tuple[float, float, float]
           ) -> tuple[float, float] | None:
    """A centre keeping a disc of ``radius`` inside the image and off the ``avoid`` disc."""
    for _ in range(20):
        x, y = rng.uniform(radius, size - radius, 2)
        if math.hypot(x - avoid[0], y - avoid[1]) > radius + avoid[2]:
            return x, y
    return None


def class_names(fine: bool = False, tail: bool = False) -> tuple[str, ...]:
    """The classes of the default (wing patch only), the fine (wing patch and crown) or the
    three-part (``tail``: and the tail's tip) scenes."""
    if tail:
        return TAIL_CLASS_NAMES
    return FINE_CLASS_NAMES if fine else CLASS_NAMES


def make_scene(rng_or_seed: np.random.Generator | int, label: int, size: int = DEFAULT_SIZE,
               small_objects: bool = False, fine: bool = False, tail: bool = False) -> Scene:
    """Render one scene of class ``label``; all randomness is drawn independently of the label.

    ``small_objects`` keeps birds at the pixel scale of a DEFAULT_SIZE scene, so that in a larger
    ``size`` they cover a small fraction of the image (more clutter is added to match).
    ``fine``: ``label`` indexes FINE_CLASS_NAMES and the bird also gets a coloured crown;
    ``tail``: ``label`` indexes TAIL_CLASS_NAMES, and the tail's tip is coloured too.
    """
    names = class_names(fine, tail)
    if not 0 <= label < len(names):
        raise ValueError(f"label {label} outside 0..{len(names) - 1}")
    fine_label = label // len(TAILS) if tail else label
    fine = fine or tail
    wing_label = fine_label // len(CROWNS) if fine else label
    rng = _rng(rng_or_seed)
    scale = DEFAULT_SIZE if small_objects else size
    clutter = (size / scale) ** 2
    canvas = _Canvas(size)
    _background(canvas, rng, scale)

    a = rng.uniform(*BODY_SCALE) * scale
    radius = 1.7 * a
    cx, cy = rng.uniform(radius, size - radius, 2)
    bird = _Bird.draw(rng, cx, cy, a)

    for _ in range(int(rng.integers(0, 4) * clutter)):  # loose patches in the class colours
        pa = rng.uniform(0.07, 0.12) * scale
        pos = _place(rng, size, pa, (cx, cy, radius))
        if pos is not None:
            colour, barred = _class_spec(int(rng.integers(len(CLASS_NAMES))))
            _patch(canvas, *pos, pa, pa * rng.uniform(0.5, 0.8), rng.uniform(0, math.pi), colour,
                   barred, rng.uniform(0.5, 0.65), rng.uniform(0, 2 * math.pi))
    for _ in range(int(rng.integers(0, 3) * clutter)):  # birds whose wing patch is plain body
        da = a * rng.uniform(0.6, 1.0)
        pos = _place(rng, size, 1.7 * da, (cx, cy, radius))
        if pos is not None:
            other = _Bird.draw(rng, *pos, da)
            other.paint_body(canvas, np.zeros((size, size), dtype=bool))
            other.paint_part(canvas, other.body * rng.uniform(0.55, 0.85), bool(rng.integers(2)))

    object_mask = np.zeros((size, size), dtype=bool)
    bird.paint_body(canvas, object_mask)
    light = rng.uniform(0.9, 1.1, (3, 1, 1)).astype(np.float32)
    grain = rng.normal(0, rng.uniform(0.01, 0.03), canvas.img.shape).astype(np.float32)

    win, alpha = bird.paint_part(canvas, *_class_spec(wing_label))
    part_mask = np.zeros((size, size), dtype=bool)
    part_mask[win] = alpha > 0
    part_ids = None
    if fine:
        part_ids = np.where(part_mask, WING, 0).astype(np.uint8)
        crown = np.array(list(CROWNS.values())[fine_label % len(CROWNS)], dtype=np.float32)
        win, alpha = bird.paint_crown(canvas, crown)
        part_ids[win] = np.where(alpha > 0, CROWN, part_ids[win])
        if tail:
            tip = np.array(list(TAILS.values())[label % len(TAILS)], dtype=np.float32)
            win, alpha = bird.paint_tail_tip(canvas, tip)
            part_ids[win] = np.where(alpha > 0, TAIL, part_ids[win])
        part_mask = part_ids > 0
    image = np.clip(canvas.img * light + grain, 0.0, 1.0)
    return Scene(torch.from_numpy(image), label, torch.from_numpy(part_mask), _box(part_mask),
                 _box(object_mask | part_mask),
                 torch.from_numpy(part_ids) if part_ids is not None else None, bird.points())


def make_dataset(n: int, seed: int, size: int = DEFAULT_SIZE, classes: int = 8,
                 small_objects: bool = False, fine: bool = False, tail: bool = False
                 ) -> SyntheticSet:
    """``n`` scenes, labels cycling through the first ``classes`` classes; scene i depends only
    on (seed, i), so a longer set extends a shorter one."""
    names = class_names(fine, tail)
    if not 2 <= classes <= len(names):
        raise ValueError(f"classes must be in 2..{len(names)}")
    streams = np.random.SeedSequence(seed).spawn(n)
    scenes = [make_scene(np.random.default_rng(s), i % classes, size, small_objects, fine, tail)
              for i, s in enumerate(streams)]
    return SyntheticSet(
        images=torch.stack([s.image for s in scenes]),
        labels=torch.tensor([s.label for s in scenes], dtype=torch.long),
        part_masks=torch.stack([s.part_mask for s in scenes]),
        part_boxes=torch.stack([s.part_box for s in scenes]),
        object_boxes=torch.stack([s.object_box for s in scenes]),
        class_names=names[:classes],
        part_ids=torch.stack([s.part_ids for s in scenes]) if fine or tail else None,
    )


def write_archive(root: str | Path, n: int, seed: int, size: int = DEFAULT_SIZE,
                  classes: int = 8, small_objects: bool = False, fine: bool = False,
                  tail: bool = False) -> Path:
    """Write ``root/<class>/<id>.png``, ``ground_truth.csv`` and ``part_masks.npz``; returns root.

    The CSV has image_id, path (relative to root), label, class_name, the patch box
    (x0, y0, x1, y1) and the bird's box (obj_x0 ...); the npz holds ``image_id`` and ``masks``
    (N, H, W) bool in the same order.
    """
    import pandas as pd
    from PIL import Image

    root = Path(root)
    data = make_dataset(n, seed, size, classes, small_objects, fine, tail)
    rows = []
    for i in range(n):
        image_id = f"{seed}-{i:06d}"
        name = data.class_names[int(data.labels[i])]
        path = Path(name) / f"{image_id}.png"
        (root / name).mkdir(parents=True, exist_ok=True)
        pixels = (data.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / path)
        x0, y0, x1, y1 = data.part_boxes[i].tolist()
        ox0, oy0, ox1, oy1 = data.object_boxes[i].tolist()
        rows.append({"image_id": image_id, "path": path.as_posix(), "label": int(data.labels[i]),
                     "class_name": name, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                     "obj_x0": ox0, "obj_y0": oy0, "obj_x1": ox1, "obj_y1": oy1})
    pd.DataFrame(rows).to_csv(root / "ground_truth.csv", index=False)
    np.savez_compressed(root / "part_masks.npz", image_id=np.array([r["image_id"] for r in rows]),
                        masks=data.part_masks.numpy())
    return root


def write_cub_tree(root: str | Path, n: int, seed: int, size: int = DEFAULT_SIZE,
                   classes: int = 8, small_objects: bool = False, fine: bool = False) -> Path:
    """The scenes as a CUB-200-2011 tree: ``images/<class>/<id>.png`` and the metadata files
    (``images.txt``, ``classes.txt`` named like the synthetic classes, ``image_class_labels.txt``,
    ``train_test_split.txt``: every other round of the classes a test round, so each class has
    training and test images, ``bounding_boxes.txt``: the bird, ``parts/parts.txt`` and
    ``parts/part_locs.txt``: the parts of ``_Bird.points``, all visible). The discriminative
    part is the ``left wing`` (and, ``fine``, the ``crown``)."""
    from PIL import Image

    root = Path(root)
    names = class_names(fine)[:classes]
    streams = np.random.SeedSequence(seed).spawn(n)
    part_names = list(_Bird(0, 0, 1, 1, 0, 1, DARK, DARK, 0.5, 0).points())
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for i, stream in enumerate(streams, start=1):
        scene = make_scene(np.random.default_rng(stream), (i - 1) % classes, size,
                           small_objects, fine)
        name = names[scene.label]
        relative = f"{scene.label + 1:03d}.{name}/{seed}-{i:06d}.png"
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels = (scene.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / relative)
        x0, y0, x1, y1 = scene.object_box.tolist()
        lines["images"].append(f"{i} {relative}")
        lines["labels"].append(f"{i} {scene.label + 1}")
        lines["split"].append(f"{i} {1 - (i - 1) // classes % 2}")  # rounds: train, test, ...
        lines["boxes"].append(f"{i} {x0} {y0} {x1 - x0} {y1 - y0}")
        lines["locs"] += [f"{i} {k} {x:.1f} {y:.1f} 1"
                          for k, (x, y) in enumerate(scene.points.values(), start=1)]
    (root / "parts").mkdir(parents=True, exist_ok=True)
    files = {"images.txt": lines["images"], "image_class_labels.txt": lines["labels"],
             "train_test_split.txt": lines["split"], "bounding_boxes.txt": lines["boxes"],
             "classes.txt": [f"{k} {n}" for k, n in enumerate(names, start=1)],
             "parts/parts.txt": [f"{k} {n}" for k, n in enumerate(part_names, start=1)],
             "parts/part_locs.txt": lines["locs"]}
    for name, content in files.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


def write_camera_traps(root: str | Path, frames: int, seed: int, side: int = 192,
                       classes: int = 8) -> Path:
    """Camera-trap frames with small birds and what a detector and an annotator would say.

    Frame i holds 1 + (i % 2) birds (each the bird of a ``side`` × ``side`` scene drawn at the
    classifier's pixel scale, the scenes side by side), plus one empty frame (background only)
    and one frame that does not exist (the detector failed on it). Writes ``frames/<i>.png``;
    ``md.json``: MegaDetector batch output (format 1.3) with each bird's box as an ``animal``
    detection, a low-confidence animal and a ``person`` that the defaults leave out, the empty
    frame without detections and the failed one; ``truth.parquet``: one row per bird (``path``,
    ``label_name``, the bird's ``box_*`` and its ``parts`` in frame pixels). Returns ``root``.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = Path(root)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    streams = iter(np.random.SeedSequence(seed).spawn(4 * frames + 4))
    images, truth = [], []
    for i in range(frames):
        birds = [make_scene(np.random.default_rng(next(streams)), int(rng.integers(classes)),
                            side, small_objects=True) for _ in range(1 + i % 2)]
        pixels = np.concatenate([b.image.permute(1, 2, 0).numpy() for b in birds], axis=1)
        name = f"frames/{i:04d}.png"
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / name)
        width, height = side * len(birds), side
        detections = []
        for k, bird in enumerate(birds):
            x0, y0, x1, y1 = bird.object_box.tolist()
            x0, x1 = x0 + k * side, x1 + k * side
            detections.append({"category": "1", "conf": round(float(rng.uniform(0.7, 0.99)), 3),
                               "bbox": [x0 / width, y0 / height, (x1 - x0) / width,
                                        (y1 - y0) / height]})
            truth.append({"path": name, "label_name": CLASS_NAMES[bird.label],
                          "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1,
                          "parts": [{"name": p, "x": x + k * side, "y": y}
                                    for p, (x, y) in bird.points.items()]})
        detections.append({"category": "1", "conf": 0.08, "bbox": [0.0, 0.0, 0.2, 0.2]})
        detections.append({"category": "2", "conf": 0.9, "bbox": [0.5, 0.5, 0.1, 0.2]})
        images.append({"file": name, "max_detection_conf": max(d["conf"] for d in detections),
                       "detections": detections})
    canvas = _Canvas(side)
    _background(canvas, np.random.default_rng(next(streams)), DEFAULT_SIZE)
    Image.fromarray((np.clip(canvas.img, 0, 1).transpose(1, 2, 0) * 255).round()
                    .astype(np.uint8)).save(root / "frames" / "empty.png")
    images.append({"file": "frames/empty.png", "max_detection_conf": 0.0, "detections": []})
    images.append({"file": "frames/missing.png", "failure": "Failure image access",
                   "detections": None})
    output = {"info": {"format_version": "1.3", "detector": "synthetic"},
              "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
              "images": images}
    (root / "md.json").write_text(json.dumps(output, indent=1))
    part = pa.struct([("name", pa.string()), ("x", pa.float32()), ("y", pa.float32())])
    pq.write_table(pa.Table.from_pylist(truth, pa.schema([
        ("path", pa.string()), ("label_name", pa.string()), ("box_x0", pa.float32()),
        ("box_y0", pa.float32()), ("box_x1", pa.float32()), ("box_y1", pa.float32()),
        ("parts", pa.list_(part))])), root / "truth.parquet")
    return root
