"""The perturbation every perturbation method and metric measures with, written once:
blend an image with its fill through a keep map, classify the blends in bounded chunks, read
the target's logit, probability or log-odds.

``x̃ = fill + keep · (x − fill)`` (= keep·x + (1 − keep)·fill); a boolean keep selects pixels
exactly (``torch.where``), as deletion and insertion curves need. Keep maps at any resolution
are resized to the image's (bilinear up, area down: ``resize_maps``).

Shapes broadcast: ``images`` and ``fill`` are (*I, 3, H, W) and ``targets`` (*I); a keep map is
(*L, h, w) with *L broadcasting against *I, and every answer is (*L). FIDO keeps (2, N, B) maps
of N images (``per_sample()`` gives images (N, 1, 3, H, W)); RISE keeps (masks,) maps of one
image; deletion curves keep (2, n) maps of n images. Blends go to the classifier as one flat
batch, in the order of *L, ``chunk`` images per forward pass (None: all at once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from fidoflow.pipeline.imaging.filters import resize_maps
from fidoflow.pipeline.imaging.infill import make_infill
from fidoflow.pipeline.models.inference import class_logits


def blend(images: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(*L, 3, H, W) blends ``fill + keep · (images − fill)`` of keep maps (*L, h, w) resized to
    the images' size; a boolean keep (at image size) picks pixels exactly."""
    size = tuple(images.shape[-2:])
    if keep.dtype == torch.bool:
        if tuple(keep.shape[-2:]) != size:
            raise ValueError(f"a boolean keep map must be at image size {size}")
        return torch.where(keep.unsqueeze(-3), images, fill)
    return fill + resize_maps(keep, size).unsqueeze(-3) * (images - fill)


def log_odds(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LO = logit_c − logsumexp(other logits) = log p_c − log(1 − p_c), computed stably;
    ``logits`` (M, K), ``target`` (M,)."""
    picked = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return picked - torch.logsumexp(others, dim=1)


@dataclass(frozen=True)
class Perturbation:
    """Images, their fills and targets, and the classifier that judges their blends."""

    model: nn.Module
    images: torch.Tensor
    fill: torch.Tensor
    targets: torch.Tensor
    chunk: int | None = None
    autocast: bool = False

    @classmethod
    def infilled(cls, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 infill: str, generators: list[torch.Generator], **options: object
                 ) -> Perturbation:
        """The perturbation of ``images`` with their ``infill`` (imaging/infill.py), drawn
        from each image's own random stream."""
        return cls(model, images, make_infill(images, infill, generators), targets, **options)

    def select(self, rows: torch.Tensor) -> Perturbation:
        """The same perturbation of the images ``rows`` (indices, repeats allowed)."""
        return replace(self, images=self.images[rows], fill=self.fill[rows],
                       targets=self.targets[rows])

    def per_sample(self) -> Perturbation:
        """Images (N, 1, 3, H, W) for keep maps (..., N, B, h, w): B samples per image."""
        return replace(self, images=self.images.unsqueeze(-4), fill=self.fill.unsqueeze(-4),
                       targets=self.targets.unsqueeze(-1))

    def swapped(self) -> Perturbation:
        """Image and fill exchanged: a keep map then keeps the fill (insertion's view)."""
        return replace(self, images=self.fill, fill=self.images)

    def blend(self, keep: torch.Tensor) -> torch.Tensor:
        """(*L, 3, H, W) blends of keep maps (*L, h, w)."""
        return blend(self.images, self.fill, keep)

    def logits(self, blended: torch.Tensor) -> torch.Tensor:
        """(*L, K) logits of blends (*L, 3, H, W)."""
        lead = blended.shape[:-3]
        flat = class_logits(self.model, blended.reshape(-1, *blended.shape[-3:]), self.chunk,
                            self.autocast)
        return flat.view(*lead, flat.shape[-1])

    def _read(self, keep: torch.Tensor | None, read: str) -> torch.Tensor:
        """The target's ``read`` of the blends of ``keep`` (None: of the images), shape (*L)."""
        blended = self.images if keep is None else self.blend(keep)
        lead = blended.shape[:-3]
        logits = self.logits(blended)
        logits = logits.reshape(-1, logits.shape[-1])
        targets = self.targets.expand(lead).reshape(-1)
        if read == "logit":
            out = logits.gather(1, targets[:, None]).squeeze(1)
        elif read == "probability":
            out = logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
        else:
            out = log_odds(logits, targets)
        return out.view(lead)

    def logit(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(*L) target logits of the blends (keep None: of the images themselves)."""
        return self._read(keep, "logit")

    def probability(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(*L) target softmax probabilities of the blends (keep None: of the images)."""
        return self._read(keep, "probability")

    def log_odds(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(*L) target log-odds of the blends (keep None: of the images)."""
        return self._read(keep, "log_odds")
