"""SmoothGrad (Smilkov et al. 2017) through captum's NoiseTunnel over gradient saliency: the
mean |gradient| over ``samples`` noisy copies of each image (noise 15 % of the pixel range, the
paper's 10-20 %), largest over the colour channels. The noise comes from a random stream seeded
by the batch's image seeds: the same shard and batch size give the same maps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak
from fidoflow.pipeline.methods.registry import register


@dataclass(frozen=True)
class SmoothGradConfig:
    samples: int = 16
    noise: float = 0.15
    samples_batch_size: int = 16


@register("smoothgrad", SmoothGradConfig, "SmoothGrad (captum NoiseTunnel over Saliency): mean "
          "|gradient| over noisy copies")
class SmoothGrad(Method):
    @classmethod
    def passes(cls, config: SmoothGradConfig) -> float:
        return config.samples * 3.0

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        from captum.attr import NoiseTunnel
        from captum.attr import Saliency as CaptumSaliency

        cfg = self.config
        with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
            torch.manual_seed(hash(tuple(seeds)) & ((1 << 63) - 1))
            grads = NoiseTunnel(CaptumSaliency(self.model)).attribute(
                images.detach().requires_grad_(), nt_type="smoothgrad", nt_samples=cfg.samples, stdevs=cfg.noise,
                nt_samples_batch_size=cfg.samples_batch_size, target=targets, abs=True)
        return Attribution(targets, {"joint": unit_peak(grads.detach().amax(dim=1))})
