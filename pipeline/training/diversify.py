"""The diversification block (Sun et al., AAAI 2020) on class-specific activation maps.

During training it scales part of every class map by ``alpha``: the map's peak with probability
``p_peak`` and each cell of a ``patch``-sized grid with probability ``p_patch`` (peak cells are
left to peak suppression). The network can no longer win with its single most discriminative
spot and has to find evidence in other parts too. At inference it is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DiversifyConfig:
    """Defaults: α = 0.1 (the paper's best), p_peak = p_patch = 0.5, 3x3-cell patches."""

    p_peak: float = 0.5
    p_patch: float = 0.5
    patch: int = 3
    alpha: float = 0.1

    def __post_init__(self) -> None:
        for name in ("p_peak", "p_patch", "alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"diversify {name} must be in [0, 1], got {getattr(self, name)}")
        if self.patch < 1:
            raise ValueError(f"diversify patch size must be at least 1, got {self.patch}")


class Diversification(nn.Module):
    """(N, K, h, w) class maps -> the same maps with peaks and random patches suppressed
    (training mode only; draws from torch's global random stream of the maps' device)."""

    def __init__(self, config: DiversifyConfig) -> None:
        super().__init__()
        self.config = config

    def suppression(self, maps: torch.Tensor) -> torch.Tensor:
        """The boolean (N, K, h, w) mask of activations to scale by alpha, freshly drawn."""
        cfg = self.config
        n, k, h, w = maps.shape
        flat = maps.detach().flatten(2)
        peak = (flat == flat.amax(dim=2, keepdim=True)).view(n, k, h, w)
        peak_on = torch.rand(n, k, 1, 1, device=maps.device) < cfg.p_peak
        grid = (-(-h // cfg.patch), -(-w // cfg.patch))
        patches = torch.rand(n, k, *grid, device=maps.device) < cfg.p_patch
        patches = patches.repeat_interleave(cfg.patch, 2).repeat_interleave(cfg.patch, 3)
        return (peak & peak_on) | (patches[:, :, :h, :w] & ~peak)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return maps
        return torch.where(self.suppression(maps), maps * self.config.alpha, maps)


def block_of(config: DiversifyConfig | None) -> Diversification | None:
    """The block a class-map network trains with (None: trained without one)."""
    return Diversification(config) if config is not None else None
