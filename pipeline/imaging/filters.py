"""The tensor operations every part of fidoflow shares, written once: Gaussian blur, resizing
maps between mask and image resolution, and the total variation of a map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_SIZE = 224  # pixel parameters (FIDO's blur sigma 10 px, ...) are given at 224^2


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    radius = round(3.7 * sigma) if radius is None else radius
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding. The kernel reaches
    ``radius`` pixels (default 3.7 sigma, where the Gaussian has fallen under 1e-3), capped by
    the image size."""
    n, c, h, w = x.shape
    radius = min(round(3.7 * sigma) if radius is None else radius, h - 1, w - 1)
    if sigma <= 0 or radius < 1:
        return x.clone()
    k = gaussian_kernel1d(sigma, radius).to(x)
    xp = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    flat = xp.reshape(n * c, 1, *xp.shape[-2:])
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def scaled_sigma(x: torch.Tensor, sigma_at_224: float) -> float:
    """A pixel length given at 224^2, scaled with the shorter side of ``x``."""
    return sigma_at_224 * min(x.shape[-2:]) / REFERENCE_SIZE


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) maps resampled to (..., H, W): unchanged at the same size, area averaging when
    shrinking (a 224^2 gradient map to a 28^2 mask), bilinear otherwise (the house convention
    for a mask laid over an image). Differentiable."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        flat = F.interpolate(flat, size=size, mode="area")
    else:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return flat.reshape(*lead, *size)


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over all horizontal and vertical neighbour pairs of (..., h, w)
    maps, per leading index: 0 for a constant map, 1 for a 0/1 checkerboard."""
    dv = (maps[..., 1:, :] - maps[..., :-1, :]).abs().flatten(-2)
    dh = (maps[..., :, 1:] - maps[..., :, :-1]).abs().flatten(-2)
    pairs = max(dv.shape[-1] + dh.shape[-1], 1)
    return (dv.sum(-1) + dh.sum(-1)) / pairs
