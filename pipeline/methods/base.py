"""The shared machinery of every attribution method, written once (zennit's / pytorch-grad-cam's
pattern): a method is a small class that overrides one step, ``explain`` (a batch of images to
maps at the method's own resolution), or, for a method that schedules its own batches such as
FIDO's continuous batching, ``run``. The base does the rest:

- the classifier is frozen while the method is in use (entering the method puts it in eval mode
  with ``requires_grad`` off, leaving restores both);
- targets default to the top-1 class; images go through ``explain`` ``batch_size`` at a time;
- every map comes back resized to the requested mask size and clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import torch
from torch import nn

from fidoflow.pipeline.imaging.filters import resize_maps


@dataclass
class Attribution:
    """What a method says about N images: ``maps`` name -> (N, h, w) values in [0, 1] (always
    ``joint``, the saliency every stage downstream uses, plus the method's own maps) and
    ``scalars`` name -> (N,) per-image numbers (e.g. how well an optimisation succeeded);
    ``rows``: rows of the run-folder table the method declares (``Method.table``: SAG's graph
    nodes, a concept method's contributions), each naming its image by position (``image``);
    empty for the methods that declare none."""

    target: torch.Tensor
    maps: dict[str, torch.Tensor]
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if "joint" not in self.maps:
            raise ValueError("an Attribution always holds a 'joint' map")

    @staticmethod
    def concat(parts: list[Attribution]) -> Attribution:
        """The attributions of consecutive batches as one."""
        first = parts[0]
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + len(p.target))
        return Attribution(torch.cat([p.target for p in parts]),
                           {k: torch.cat([p.maps[k] for p in parts]) for k in first.maps},
                           {k: torch.cat([p.scalars[k] for p in parts]) for k in first.scalars},
                           [{**row, "image": row["image"] + offset}
                            for p, offset in zip(parts, offsets, strict=False) for row in p.rows])


class Method:
    """Base of all methods: ``with Kind(model, config) as m: m.attribute(images)``.

    ``model`` takes pixel-space images (N, 3, H, W) in [0, 1] and returns logits. Subclasses
    set ``map_names`` / ``scalar_names`` (what their Attribution holds, so a store can be laid
    out before anything runs) and override ``explain`` (or ``run``).
    """

    map_names: ClassVar[tuple[str, ...]] = ("joint",)
    scalar_names: ClassVar[tuple[str, ...]] = ()
    min_batch: ClassVar[int] = 8  # images per ``explain`` call at least (FIDO: its slots decide)
    table: ClassVar[str | None] = None  # the run-folder table its Attribution.rows fill
    reads_layers: ClassVar[bool] = False  # hooks or names the classifier's layers (Grad-CAM)

    def __init__(self, model: nn.Module, config: Any = None) -> None:
        self.model = model
        self.config = config
        self._saved: tuple[bool, list[bool]] | None = None

    def __enter__(self) -> Self:
        params = list(self.model.parameters())
        self._saved = (self.model.training, [p.requires_grad for p in params])
        self.model.eval()
        for p in params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        training, flags = self._saved
        self.model.train(training)
        for p, flag in zip(self.model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        self._saved = None

    @classmethod
    def passes(cls, config: Any) -> float:
        """About how many classifier forward passes explaining one image costs (a backward
        counts two): what a run's tasks are sized by. Gradient methods: one forward and its
        backward."""
        return 3.0

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class of each image: the default target."""
        return self.model(images).argmax(dim=1)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                  seeds: list[int] | None = None, batch_size: int | None = None,
                  size: int | None = None) -> Attribution:
        """Maps of ``images`` for ``targets`` (default: top-1), ``batch_size`` images at a time
        (default: all; at least ``min_batch``), resized to ``size`` × ``size`` (default: the method's own resolution).
        ``seeds`` (one per image) make random methods repeatable whatever the batch."""
        if targets is None:
            targets = self.predict(images)
        seeds = list(range(len(images))) if seeds is None else list(seeds)
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        out = self.run(images, targets, seeds, max(batch_size or len(images), self.min_batch))
        if size is not None:
            out.maps = {k: resize_maps(v.float(), (size, size)) for k, v in out.maps.items()}
        out.maps = {k: v.float().clamp(0, 1) for k, v in out.maps.items()}
        return out

    def run(self, images: torch.Tensor, targets: torch.Tensor, seeds: list[int],
            batch_size: int) -> Attribution:
        """The batching step: consecutive chunks of ``batch_size`` images through ``explain``."""
        return Attribution.concat([
            self.explain(images[i:i + batch_size], targets[i:i + batch_size],
                         seeds[i:i + batch_size])
            for i in range(0, len(images), batch_size)])

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        """The one step a method writes: maps of a batch of images (any resolution)."""
        raise NotImplementedError


def unit_peak(maps: torch.Tensor) -> torch.Tensor:
    """(N, h, w) non-negative maps scaled so that each image's maximum is 1 (all-zero stays 0)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (maps.dim() - 1)))
    return maps / peak


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU random stream per image, so an image's maps never depend on its batch partners."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
