"""FIDO with simplified (SCD) or classic (CD) concrete dropout, many images per optimisation step.

Implements ../ALGORITHM.md: joint SSR + SDR objective, one forward/backward over 2·N·B blended
images per step, per-image random streams, penalties normalised by the mask area so that their
weights do not depend on the mask size.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .attribution import Attribution, Attributor, image_generators, log_odds
from .infill import make_infill
from .samplers import make_sampler


@dataclass(frozen=True)
class FidoConfig:
    """Hyper-parameters of one FIDO run.

    ``l1`` weighs the *mean* keep of the SSR plus the mean drop of the SDR (halved), ``tv`` the
    *mean* absolute difference between neighbouring mask cells: both are per-cell averages, so the
    same weights serve a 28² and a 224² mask.
    """

    sampler: str = "scd"
    samples: int = 4
    iterations: int = 30
    mask_size: int = 28
    lr: float = 0.5
    l1: float = 4.0
    tv: float = 4.0
    warmup: int = 5
    temperature: float | None = None
    infill: str = "blur"
    adam_eps: float = 1e-3
    autocast: bool = True

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def total_variation(keep: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertical and horizontal neighbours, per leading index."""
    dv = (keep[..., 1:, :] - keep[..., :-1, :]).abs().mean(dim=(-2, -1))
    dh = (keep[..., :, 1:] - keep[..., :, :-1]).abs().mean(dim=(-2, -1))
    return dv + dh


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., h, w) maps to (..., H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def blend(images: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x̃ = keep·x + (1-keep)·fill with ``keep`` (..., N, [B,] H, W) broadcast over channels."""
    return fill + keep.unsqueeze(-3) * (images - fill)


class Fido(Attributor):
    """FIDO attributor; ``with Fido(model, config) as fido: fido.attribute(images)``."""

    def __init__(self, model: torch.nn.Module, config: FidoConfig = FidoConfig()) -> None:
        super().__init__(model)
        self.config = config
        self.sampler = make_sampler(config.sampler, config.temperature)
        self.name = config.sampler

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.config.autocast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor | None = None, seeds: list[int] | None = None
    ) -> Attribution:
        """Masks for ``images`` (N, 3, H, W) in pixel space [0, 1]; targets default to top-1."""
        cfg = self.config
        n, _, height, width = images.shape
        seeds = list(range(n)) if seeds is None else seeds
        if len(seeds) != n:
            raise ValueError(f"{n} images but {len(seeds)} seeds")
        if targets is None:
            targets = self.predict(images)
        generators = image_generators(seeds)
        fill = make_infill(images, cfg.infill, generators)
        b, m = cfg.samples, cfg.mask_size

        # theta[0] = SSR keep-logits, theta[1] = SDR keep-logits; one sign convention throughout.
        theta = torch.zeros(2, n, m, m, device=images.device, requires_grad=True)
        optimiser = torch.optim.Adam([theta], lr=cfg.lr, eps=cfg.adam_eps)
        x = images.unsqueeze(1)  # (N, 1, 3, H, W): broadcast over samples
        fx = fill.unsqueeze(1)
        flat_targets = targets.repeat_interleave(b).repeat(2)
        for step in range(cfg.iterations):
            noise = torch.stack([torch.rand(2, b, m, m, generator=g) for g in generators], dim=1)
            keep = self.sampler.keep(theta.unsqueeze(2), noise.to(images.device))  # (2, N, B, m, m)
            blended = blend(x, fx, upsample(keep, (height, width)))  # (2, N, B, 3, H, W)
            with self._autocast(images.device):
                logits = self.model(blended.reshape(2 * n * b, 3, height, width))
            lo = log_odds(logits.float(), flat_targets).view(2, n, b).mean(dim=2)
            data = (lo[1] - lo[0]).sum()  # sum over images: gradients independent of N
            det = torch.sigmoid(theta)
            sparsity = 0.5 * (det[0].mean(dim=(1, 2)) + (1 - det[1]).mean(dim=(1, 2)))
            smooth = total_variation(det).sum(dim=0)
            warm = min(step / cfg.warmup, 1.0) if cfg.warmup > 0 else 1.0
            loss = data + warm * (cfg.l1 * sparsity + cfg.tv * smooth).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        with torch.no_grad():
            keep = torch.sigmoid(theta)
            blended = blend(images, fill, upsample(keep, (height, width)))  # (2, N, 3, H, W)
            with self._autocast(images.device):
                logits = self.model(blended.reshape(2 * n, 3, height, width))
            probs = logits.float().softmax(dim=1).gather(1, targets.repeat(2)[:, None]).view(2, n)
            ssr, sdr = keep[0], 1.0 - keep[1]
            return Attribution(
                joint=torch.sqrt(ssr * sdr), target=targets, ssr=ssr, sdr=sdr,
                p_ssr=probs[0], p_sdr=probs[1],
            )
