"""I-GOS (Qi, Khorram, Li, AAAI 2020): integrated-gradient optimised saliency.

One mask M (28 × 28, 1 = keep) per image, initialised to 1, minimises
``p_c(M ⊙ x + (1 − M) ⊙ blur(x)) + L1 · mean|1 − M| + L2 · TV(M)``. The descent direction of the
data term is an integrated gradient: the mean of its gradients at the masks (k/K) · M + ε,
k = 1..K (K = 20, ε ~ N(0, 0.2²)), i.e. along the straight path from the all-blurred image to
the current one, which escapes the flat start that traps the plain gradient; the penalties add
their plain gradient. Each image then takes an Armijo backtracking step (start α, halve until the
loss drops by β · step · |g|²), and M is clamped to [0, 1]. Saliency = 1 − M.

The descent and line search are written so that iGOS++ (igospp.py) reuses them with its two
masks. Every image of a batch is optimised together; its noise comes from its own seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fidoflow.pipeline.imaging.filters import total_variation
from fidoflow.pipeline.methods.base import Attribution, Method, image_generators
from fidoflow.pipeline.methods.registry import register
from fidoflow.pipeline.perturbation import Perturbation

Masks = list[torch.Tensor]  # the optimised masks of a batch, each (N, s, s)
RowLoss = Callable[[Masks], torch.Tensor]  # masks -> (N,) per-image loss


@dataclass(frozen=True)
class IgosConfig:
    """The paper's defaults: L1 = 1, L2 = 20, 20 integration steps with noise 0.2, Armijo line
    search from α = 1000; 15 descent steps (the paper uses 15-20)."""

    iterations: int = 15
    mask_size: int = 28
    l1: float = 1.0
    l2: float = 20.0
    integration_steps: int = 20
    noise: float = 0.2
    step: float = 1000.0
    armijo: float = 1e-4
    backtracks: int = 12
    infill: str = "blur"


def integrated_gradient(data: RowLoss, masks: Masks, steps: int, noise: float,
                        generators: Sequence[torch.Generator]) -> Masks:
    """Mean gradient of ``data`` at (k/K) · masks + N(0, noise²), k = 1..K, per mask."""
    total = [torch.zeros_like(m) for m in masks]
    for k in range(1, steps + 1):
        path = []
        for m in masks:
            eps = torch.stack([torch.randn(m.shape[1:], generator=g) for g in generators]).to(m)
            path.append((k / steps * m + noise * eps).clamp(0, 1).requires_grad_(True))
        grads = torch.autograd.grad(data(path).sum(), path)
        total = [t + g / steps for t, g in zip(total, grads, strict=True)]
    return total


def descend(data: RowLoss, penalty: RowLoss, masks: Masks, cfg: IgosConfig,
            generators: Sequence[torch.Generator]) -> Masks:
    """One I-GOS step of every image: integrated-gradient direction, Armijo step, clamp."""
    live = [m.detach().requires_grad_(True) for m in masks]
    reg_grads = torch.autograd.grad(penalty(live).sum(), live)
    ig = integrated_gradient(data, masks, cfg.integration_steps, cfg.noise, generators)
    grads = [a + b for a, b in zip(ig, reg_grads, strict=True)]
    sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
    with torch.no_grad():
        current = data(masks) + penalty(masks)
        step = torch.full_like(current, cfg.step)
        chosen = [m.clone() for m in masks]
        pending = torch.ones_like(current, dtype=torch.bool)
        for attempt in range(cfg.backtracks):
            trial = [(m - step.view(-1, 1, 1) * g).clamp(0, 1) for m, g in zip(masks, grads,
                                                                             strict=True)]
            ok = data(trial) + penalty(trial) <= current - cfg.armijo * step * sq
            take = pending & (ok | (attempt == cfg.backtracks - 1))  # last try: smallest step
            for c, t in zip(chosen, trial, strict=True):
                c[take] = t[take]
            pending &= ~take
            if not pending.any():
                break
            step = torch.where(pending, step / 2, step)
    return chosen


@register("igos", IgosConfig, "I-GOS (Qi et al. 2020): one blur-deletion mask, integrated-"
          "gradient descent with Armijo line search; saliency = 1 − mask")
class Igos(Method):
    @classmethod
    def passes(cls, config: IgosConfig) -> float:
        """Each step: the integrated gradient, the penalty's and about two line-search tries."""
        return config.iterations * (config.integration_steps * 3 + 3)

    scalar_names = ("p_deleted",)

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        cfg = self.config
        generators = image_generators(seeds)
        scene = Perturbation.infilled(self.model, images, targets, cfg.infill, generators)

        def data(masks: Masks) -> torch.Tensor:
            return scene.probability(masks[0])

        def penalty(masks: Masks) -> torch.Tensor:
            m = masks[0]
            return cfg.l1 * (1 - m).abs().flatten(1).mean(1) + cfg.l2 * total_variation(m)

        masks = [torch.ones(len(images), cfg.mask_size, cfg.mask_size, device=images.device)]
        for _ in range(cfg.iterations):
            masks = descend(data, penalty, masks, cfg, generators)
        with torch.no_grad():
            p = data(masks)
        return Attribution(targets, {"joint": 1 - masks[0]}, {"p_deleted": p})
