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
    same weights serve a 28² and a 224² mask. The defaults were chosen by the sweep recorded in
    bench/RESULTS.md on the synthetic fine-grained benchmark (never on the demo photos).

    ``lo_cap`` (None = the plain objective of ALGORITHM.md) caps each sample's evidence: an SSR
    blend whose target log-odds exceed +cap, or an SDR blend below -cap, earns nothing more, so
    once a region is *sufficient* (or *destroying*) only the penalties act and shrink it. That
    makes the mask's extent follow sufficiency rather than the balance of ``l1`` against the
    log-odds scale, which differs between a small part and a large object.
    """

    sampler: str = "scd"
    samples: int = 4
    iterations: int = 30
    mask_size: int = 28
    lr: float = 1.0
    l1: float = 64.0
    tv: float = 32.0
    warmup: int = 5
    temperature: float | None = None
    infill: str = "blur"
    adam_eps: float = 1e-3
    lo_cap: float | None = 2.0
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


class FidoObjective:
    """The joint SSR + SDR loss of N images: fixed images, in-fills, targets and random streams.

    ``loss(theta, step)`` draws one batch of noise per image from its own stream, so the same
    images and seeds give the same sequence of losses whatever else is in the batch.
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 config: FidoConfig, seeds: list[int]) -> None:
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        self.model, self.config = model, config
        self.sampler = make_sampler(config.sampler, config.temperature)
        self.generators = image_generators(seeds)
        self.images = images
        self.fill = make_infill(images, config.infill, self.generators)
        self.targets = targets
        self._flat_targets = targets.repeat_interleave(config.samples).repeat(2)
        self.autocast = config.autocast and images.device.type == "cuda"

    def initial_theta(self) -> torch.Tensor:
        """theta[0] = SSR keep-logits, theta[1] = SDR keep-logits, both 0 (keep 0.5)."""
        m = self.config.mask_size
        return torch.zeros(2, len(self.images), m, m, device=self.images.device, requires_grad=True)

    def classify(self, blended: torch.Tensor) -> torch.Tensor:
        context = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with context:
            return self.model(blended.reshape(-1, *blended.shape[-3:])).float()

    def draw_noise(self) -> torch.Tensor:
        b, m = self.config.samples, self.config.mask_size
        noise = torch.stack([torch.rand(2, b, m, m, generator=g) for g in self.generators], dim=1)
        return noise.to(self.images.device)  # (2, N, B, m, m)

    def data_term(self, theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per image mean_b[LO(sdr blend) - LO(ssr blend)], shape (N,)."""
        n, b = len(self.images), self.config.samples
        keep = self.sampler.keep(theta.unsqueeze(2), noise)  # (2, N, B, m, m)
        size = self.images.shape[-2:]
        blended = blend(self.images.unsqueeze(1), self.fill.unsqueeze(1), upsample(keep, size))
        lo = log_odds(self.classify(blended), self._flat_targets).view(2, n, b)
        cap = self.config.lo_cap
        if cap is not None:
            lo = torch.stack([lo[0].clamp(max=cap), lo[1].clamp(min=-cap)])
        lo = lo.mean(dim=2)
        return lo[1] - lo[0]

    def penalty(self, theta: torch.Tensor) -> torch.Tensor:
        """Per image l1·½(mean keep_ssr + mean drop_sdr) + tv·TV(both maps), shape (N,)."""
        keep = torch.sigmoid(theta)
        sparsity = 0.5 * (keep[0].mean(dim=(1, 2)) + (1 - keep[1]).mean(dim=(1, 2)))
        return self.config.l1 * sparsity + self.config.tv * total_variation(keep).sum(dim=0)

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        """Summed over images (not averaged): an image's gradient does not depend on N."""
        warmup = self.config.warmup
        ramp = min(step / warmup, 1.0) if warmup > 0 else 1.0
        return (self.data_term(theta, self.draw_noise()) + ramp * self.penalty(theta)).sum()

    @torch.no_grad()
    def outcome(self, theta: torch.Tensor) -> Attribution:
        """Deterministic maps and the target's probability under the SSR and SDR blends."""
        keep = torch.sigmoid(theta)
        blended = blend(self.images, self.fill, upsample(keep, self.images.shape[-2:]))
        probs = self.classify(blended).softmax(dim=1)
        p = probs.gather(1, self.targets.repeat(2)[:, None]).view(2, -1)
        ssr, sdr = keep[0], 1.0 - keep[1]
        return Attribution(joint=torch.sqrt(ssr * sdr), target=self.targets, ssr=ssr, sdr=sdr,
                           p_ssr=p[0], p_sdr=p[1])


class Fido(Attributor):
    """FIDO attributor; ``with Fido(model, config) as fido: fido.attribute(images)``."""

    def __init__(self, model: torch.nn.Module, config: FidoConfig = FidoConfig()) -> None:
        super().__init__(model)
        self.config = config
        self.name = config.sampler

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor | None = None, seeds: list[int] | None = None
    ) -> Attribution:
        """Masks for ``images`` (N, 3, H, W) in pixel space [0, 1]; targets default to top-1."""
        if targets is None:
            targets = self.predict(images)
        seeds = list(range(len(images))) if seeds is None else seeds
        objective = FidoObjective(self.model, images, targets, self.config, seeds)
        theta = objective.initial_theta()
        optimiser = torch.optim.Adam([theta], lr=self.config.lr, eps=self.config.adam_eps)
        for step in range(self.config.iterations):
            optimiser.zero_grad(set_to_none=True)
            objective.loss(theta, step).backward()
            optimiser.step()
        return objective.outcome(theta.detach())
