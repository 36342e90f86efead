"""The shared machinery of every attribution method: a frozen classifier used as a context manager.

An attributor is a small class with one ``attribute`` method; entering it puts the classifier in
eval mode with frozen parameters, leaving restores what was there (zennit's pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import torch
from torch import nn


@dataclass
class Attribution:
    """Masks of N images at mask resolution, values in [0, 1].

    ``joint`` is the saliency every method provides; FIDO methods also fill ``ssr`` (what must
    be kept), ``sdr`` (what must be dropped) and the target's probability under the deterministic
    SSR and SDR blends, which says whether the optimisation succeeded.
    """

    joint: torch.Tensor
    target: torch.Tensor
    ssr: torch.Tensor | None = None
    sdr: torch.Tensor | None = None
    p_ssr: torch.Tensor | None = None
    p_sdr: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Attributor:
    """Base of all methods: freezes ``model`` (pixel-space images in, logits out) while in use."""

    name = "attributor"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
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
        for p, flag in zip(self.model.parameters(), flags):
            p.requires_grad_(flag)
        self._saved = None

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Top-1 class of each image: the default target."""
        return self.model(images).argmax(dim=1)

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor | None = None, seeds: list[int] | None = None
    ) -> Attribution:
        raise NotImplementedError


def log_odds(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LO = logit_c - logsumexp(other logits) = log p_c - log(1 - p_c), computed stably."""
    picked = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return picked - torch.logsumexp(others, dim=1)


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU random stream per image, so an image's masks never depend on its batch partners."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
