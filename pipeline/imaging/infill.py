"""In-fills: what a dropped pixel is replaced with. Computed once per image, in pixel space [0, 1]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fidoflow.pipeline.imaging.filters import REFERENCE_SIZE, gaussian_blur, scaled_sigma


def blur_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return gaussian_blur(x, scaled_sigma(x, 10.0))


def mean_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


def zeros_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.zeros_like(x)


def uniform_noise_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.rand(x.shape[1:], generator=g) for g in generators]).to(x)


def normal_noise_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Gaussian noise with each image's per-channel mean and std, clamped to [0, 1]."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
    return (mean + std * noise).clamp(0.0, 1.0)


def knockoff_fill(x: torch.Tensor, generators: Sequence[torch.Generator], patch: int = 9) -> torch.Tensor:
    """Shuffle pixels inside each patch x patch tile (same permutation for all channels)."""
    n, c, h, w = x.shape
    ph, pw = -h % patch, -w % patch
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate")
    gh, gw = xp.shape[-2] // patch, xp.shape[-1] // patch
    tiles = xp.reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, gh * gw, c, patch * patch)
    keys = torch.stack([torch.rand(gh * gw, patch * patch, generator=g) for g in generators])
    order = keys.argsort(dim=-1).to(x.device).unsqueeze(2).expand(-1, -1, c, -1)
    shuffled = tiles.gather(-1, order)
    out = shuffled.reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n, c, gh * patch, gw * patch)[..., :h, :w].contiguous()


def inpaint_fill(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Classical stand-in for FIDO's generative in-filler (OpenCV Telea).

    Two passes over horizontal bands: even bands are re-synthesised from the odd ones, then the
    odd bands from that result, so that no original pixel survives while local colour and
    texture statistics do; a light blur removes the band seams.
    """
    import cv2
    import numpy as np

    out = []
    band = max(4, round(16 * min(x.shape[-2:]) / REFERENCE_SIZE))
    for img in x:
        arr = (img.permute(1, 2, 0).cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
        even = ((np.arange(arr.shape[0]) // band) % 2 == 0)[:, None].repeat(arr.shape[1], 1)
        for hole in (even, ~even):
            arr = cv2.inpaint(np.ascontiguousarray(arr), hole.astype(np.uint8) * 255, band,
                              cv2.INPAINT_TELEA)
        out.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0)
    return gaussian_blur(torch.stack(out).to(x), scaled_sigma(x, 4.0))


InfillFn = Callable[[torch.Tensor, Sequence[torch.Generator]], torch.Tensor]

INFILLS: dict[str, InfillFn] = {
    "blur": blur_fill,
    "mean": mean_fill,
    "zeros": zeros_fill,
    "noise": uniform_noise_fill,
    "normal": normal_noise_fill,
    "knockoff": knockoff_fill,
    "inpaint": inpaint_fill,
}


def make_infill(x: torch.Tensor, name: str, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The in-fill of each image in ``x`` (N, 3, H, W), pixel space [0, 1]."""
    try:
        fn = INFILLS[name]
    except KeyError:
        raise ValueError(f"unknown in-fill {name!r}; expected one of {sorted(INFILLS)}") from None
    return fn(x, generators)
