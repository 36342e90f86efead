"""FIDO with simplified (SCD) or classic (CD) concrete dropout, many images per optimisation step.

Implements docs/method.md ("FIDO: the objective"): joint SSR + SDR objective, one forward/backward over 2·N·B blended
images per step, per-image random streams, penalties normalised by the mask area so that their
weights do not depend on the mask size. Images stream through N slots (continuous batching): one
that is done, after its iterations or once its masks settle, hands its slot to the next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fidoflow.pipeline.imaging.filters import resize_maps, total_variation
from fidoflow.pipeline.imaging.infill import make_infill
from fidoflow.pipeline.methods.base import Attribution, Method, image_generators
from fidoflow.pipeline.methods.registry import FIDO_OPTIONS, register
from fidoflow.pipeline.methods.samplers import make_sampler
from fidoflow.pipeline.perturbation import Perturbation

STOP_CHECK_EVERY = 5  # steps between two looks at whether an image's masks have settled
FLOOR_SLOPE = 4.0  # how much more the SSR's log-odds count below the floor than above


@dataclass(frozen=True)
class FidoConfig:
    """Hyper-parameters of one FIDO run.

    ``l1`` weighs the *mean* keep of the SSR plus the mean drop of the SDR (halved), ``tv`` the
    mean absolute difference over all neighbouring pairs of mask cells (pipeline/imaging/filters.py;
    64 here equals the 32 the sweep used on the sum of the vertical and the horizontal mean):
    both are per-cell averages, so the same weights serve a 28² and a 224² mask. The defaults were chosen by the sweep recorded in
    bench/RESULTS.md on the synthetic fine-grained benchmark (never on the demo photos).

    ``lo_cap`` (None = the plain objective of the papers) caps each sample's evidence: an SSR
    blend whose target log-odds exceed +cap, or an SDR blend below -cap, earns nothing more, so
    once a region is *sufficient* (or *destroying*) only the penalties act and shrink it. That
    makes the mask's extent follow sufficiency rather than the balance of ``l1`` against the
    log-odds scale, which differs between a small part and a large object.

    ``ssr_floor`` (None = off; default 0.5, issue 11 in bench/RESULTS.md) guards sufficiency:
    when the SSR samples' mean target log-odds fall under those of this fraction of the clean
    probability, the missing log-odds count ``FLOOR_SLOPE`` times more, so the sparsity penalty
    cannot shrink a region below what keeps the class (a cat that fills the frame needs many
    cells; without the floor its SSR kept a third of the probability).

    ``stop_change`` (None = always ``iterations`` steps) ends an image's optimisation early once
    its keeps moved less than this on average over the last 5 steps; ``iterations`` stays the cap.

    ``penalty_sums`` takes ``l1`` and ``tv`` as the public code does, weights of *sums* over the
    mask's cells and neighbour pairs (their effect then grows with the mask size): only for the
    ``fido-public`` reference.

    ``stages`` > 1 optimises coarse to fine: the mask starts at ``mask_size`` / 2^(stages-1)
    cells a side and doubles at each stage (iterations split evenly), each stage starting from
    the last one's logits upsampled bilinearly. The coarse stages find *where* (concentration,
    cheap to get right with few cells), the fine ones refine the ranking inside; the cost per
    step is the classifier's, whatever the mask size.
    """

    sampler: str = "scd"
    samples: int = 4
    iterations: int = 30
    mask_size: int = 28
    lr: float = 1.0
    l1: float = 64.0
    tv: float = 64.0
    warmup: int = 5
    temperature: float | None = None
    infill: str = "blur"
    adam_eps: float = 1e-3
    lo_cap: float | None = 2.0
    autocast: bool = True
    stop_change: float | None = None
    stages: int = 1
    penalty_sums: bool = False
    ssr_floor: float | None = 0.5

    def __post_init__(self) -> None:
        if self.stages < 1 or self.mask_size % 2 ** (self.stages - 1):
            raise ValueError(f"mask_size {self.mask_size} cannot be halved {self.stages - 1} "
                             "times (stages): use a multiple of 2^(stages-1)")
        if self.iterations < self.stages:
            raise ValueError(f"{self.iterations} iterations cannot fill {self.stages} stages")

    def coarseness(self, steps: torch.Tensor) -> torch.Tensor:
        """Per slot, how many final mask cells a side one cell of its current stage spans
        (1 in the last stage), from the steps it has taken."""
        stage = (steps * self.stages).div(self.iterations, rounding_mode="floor")
        return 2 ** (self.stages - 1 - stage.clamp(max=self.stages - 1)).long()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class FidoObjective:
    """The joint SSR + SDR loss of the images in the engine's slots: their perturbation (images,
    in-fills, targets) and one random stream per image.

    ``loss(theta, ramp)`` draws one batch of noise per image from its own stream, so the same
    images and seeds give the same sequence of losses whatever else is in the batch; ``admit``
    puts a new image into a slot and ``keep_rows`` drops finished slots (continuous batching).
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 config: FidoConfig, seeds: list[int]) -> None:
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        self.model, self.config = model, config
        self.sampler = make_sampler(config.sampler, config.temperature)
        self.generators = image_generators(seeds)
        self.scene = Perturbation.infilled(
            model, images, targets, config.infill, self.generators,
            autocast=config.autocast and images.device.type == "cuda")
        self.floor = self.floor_log_odds(self.scene)

    def admit(self, row: int, image: torch.Tensor, target: torch.Tensor, seed: int) -> None:
        """Slot ``row`` now holds ``image`` (3, H, W) with a fresh random stream."""
        generator = image_generators([seed])[0]
        self.generators[row] = generator
        self.scene.images[row] = image
        self.scene.fill[row] = make_infill(image[None], self.config.infill, [generator])[0]
        self.scene.targets[row] = target
        self.floor[row] = self.floor_log_odds(self.scene.select(torch.tensor([row])))[0]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the slots ``rows`` (indices), in that order."""
        self.generators = [self.generators[int(r)] for r in rows]
        self.scene = self.scene.select(rows)
        self.floor = self.floor[rows]

    @torch.no_grad()
    def floor_log_odds(self, scene: Perturbation) -> torch.Tensor:
        """(N,) log-odds of ``ssr_floor`` × each image's clean target probability (-inf: off)."""
        if self.config.ssr_floor is None:
            return torch.full((len(scene.images),), float("-inf"), device=scene.images.device)
        return torch.logit(scene.probability() * self.config.ssr_floor, eps=1e-6)

    def initial_theta(self) -> torch.Tensor:
        """theta[0] = SSR keep-logits, theta[1] = SDR keep-logits, both 0 (keep 0.5)."""
        m, images = self.config.mask_size, self.scene.images
        return torch.zeros(2, len(images), m, m, device=images.device, requires_grad=True)

    def draw_noise(self, rows: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """(2, N, B, m, m) uniform noise from the slots' own streams (``rows``: those slots)."""
        b, m = self.config.samples, size or self.config.mask_size
        generators = self.generators if rows is None else [self.generators[int(r)] for r in rows]
        noise = torch.stack([torch.rand(2, b, m, m, generator=g) for g in generators], dim=1)
        return noise.to(self.scene.images.device)

    def data_term(self, theta: torch.Tensor, noise: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per image mean_b[LO(sdr blend) - LO(ssr blend)], shape (N,), for the slots ``rows``
        (default: all; ``theta`` and ``noise`` hold those slots only)."""
        scene, floor = ((self.scene, self.floor) if rows is None
                        else (self.scene.select(rows), self.floor[rows]))
        keep = self.sampler.keep(theta.unsqueeze(2), noise)  # (2, N, B, m, m)
        lo = scene.per_sample().log_odds(keep)  # (2, N, B)
        cap = self.config.lo_cap
        shortfall = (floor - lo[0].mean(dim=1)).clamp(min=0)  # 0 everywhere when the floor is off
        if cap is not None:
            lo = torch.stack([lo[0].clamp(max=cap), lo[1].clamp(min=-cap)])
        lo = lo.mean(dim=2)
        return lo[1] - lo[0] + FLOOR_SLOPE * shortfall

    def penalty(self, theta: torch.Tensor) -> torch.Tensor:
        """Per image l1·½(mean keep_ssr + mean drop_sdr) + tv·TV(both maps), shape (N,); with
        ``penalty_sums`` sums over the cells and the neighbour pairs instead of means."""
        keep = torch.sigmoid(theta)
        sparsity = 0.5 * (keep[0].mean(dim=(1, 2)) + (1 - keep[1]).mean(dim=(1, 2)))
        smoothness = total_variation(keep).sum(dim=0)
        if self.config.penalty_sums:
            h, w = keep.shape[-2:]
            sparsity, smoothness = sparsity * h * w, smoothness * (h * (w - 1) + w * (h - 1))
        return self.config.l1 * sparsity + self.config.tv * smoothness

    def loss(self, theta: torch.Tensor, ramp: torch.Tensor,
             coarseness: torch.Tensor | None = None) -> torch.Tensor:
        """Summed over images (not averaged): an image's gradient does not depend on N.
        ``ramp`` (N,) in [0, 1] scales each image's penalties during its warm-up; with
        ``coarseness`` (N,) a slot's theta is average-pooled by it first (its current stage)."""
        if coarseness is None or bool((coarseness == 1).all()):
            return (self.data_term(theta, self.draw_noise()) + ramp * self.penalty(theta)).sum()
        total = theta.new_zeros(())
        for factor in coarseness.unique().tolist():
            rows = (coarseness == factor).nonzero().flatten()
            coarse = F.avg_pool2d(theta[:, rows], factor)
            data = self.data_term(coarse, self.draw_noise(rows, coarse.shape[-1]), rows)
            total = total + (data + ramp[rows] * self.penalty(coarse)).sum()
        return total

    @torch.no_grad()
    def outcome(self, theta: torch.Tensor, rows: torch.Tensor | None = None) -> Attribution:
        """Deterministic maps and the target's probability under the SSR and SDR blends, for the
        slots ``rows`` (default: all); ``theta`` holds those slots only."""
        scene = self.scene if rows is None else self.scene.select(rows)
        keep = torch.sigmoid(theta)
        p = scene.probability(keep)  # (2, N)
        ssr, sdr = keep[0], 1.0 - keep[1]
        return Attribution(scene.targets, {"joint": torch.sqrt(ssr * sdr), "ssr": ssr, "sdr": sdr},
                           {"p_ssr": p[0], "p_sdr": p[1]})


class SlotAdam:
    """Adam (torch's update rule) over theta (2, N, m, m) whose N slots start at different times:
    each slot has its own step count for the bias correction and can be restarted or dropped."""

    def __init__(self, theta: torch.Tensor, lr: float, eps: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.lr, self.eps, self.betas = lr, eps, betas
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)
        self.steps = torch.zeros(theta.shape[1], device=theta.device)

    @torch.no_grad()
    def step(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        steps = self.steps.double()  # 1 - 0.999**t loses digits in float32
        correction1 = (1 - beta1 ** steps).float().view(1, -1, 1, 1)
        correction2 = (1 - beta2 ** steps).float().view(1, -1, 1, 1)
        denominator = (self.exp_avg_sq / correction2).sqrt_().add_(self.eps)
        theta.addcdiv_(self.exp_avg, denominator * correction1, value=-self.lr)

    def restart(self, row: int) -> None:
        self.exp_avg[:, row] = 0
        self.exp_avg_sq[:, row] = 0
        self.steps[row] = 0

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.exp_avg, self.exp_avg_sq = self.exp_avg[:, rows], self.exp_avg_sq[:, rows]
        self.steps = self.steps[rows]


@register("scd", FidoConfig, "FIDO with simplified concrete dropout: smallest sufficient and "
          "destroying regions (ssr, sdr), joint = sqrt(ssr·sdr); B 2 (half B 4's seconds at "
          "the same quality: bench/RESULTS.md, issue 22)", run_options=FIDO_OPTIONS, samples=2)
@register("fido-public", FidoConfig, "reference: the public SCD code's README setting (classic CD, "
          "full-resolution 224² mask, B 8, 30 steps, Adam lr 10 eps 0.1, λ1 1e-3 and λtv 1e-2 as sums, "
          "no cap; its sign bug corrected), to compare against", sampler="cd", mask_size=224,
          samples=8, lr=10.0, adam_eps=0.1, l1=1e-3, tv=1e-2, penalty_sums=True, lo_cap=None,
          ssr_floor=None)
@register("cd", FidoConfig, "FIDO with classic concrete dropout (Chang et al. 2019), same objective",
          run_options=FIDO_OPTIONS, sampler="cd")
class Fido(Method):
    """FIDO: ``with Fido(model, config) as fido: fido.attribute(images)``. Besides ``joint`` its
    maps are ``ssr`` (what must be kept) and ``sdr`` (what must be dropped); its scalars the
    target's probability under the deterministic SSR and SDR blends (whether the optimisation
    succeeded) and the steps each image took."""

    @classmethod
    def passes(cls, config: FidoConfig) -> float:
        """Each step: 2·B blends forward and backward; the clean image and the outcome."""
        return config.iterations * 2 * config.samples * 3 + 3

    map_names = ("joint", "ssr", "sdr")
    scalar_names = ("p_ssr", "p_sdr", "iterations")
    min_batch = 1

    def __init__(self, model: torch.nn.Module, config: FidoConfig = FidoConfig()) -> None:
        super().__init__(model, config)

    def run(self, images: torch.Tensor, targets: torch.Tensor, seeds: list[int],
            batch_size: int) -> Attribution:
        """FIDO's own batching: ``batch_size`` slots optimised together. With
        ``config.stop_change`` an image leaves as soon as its masks stop changing and the next
        image takes its slot, so the batch stays full (continuous batching)."""
        slots = batch_size
        n = len(images)
        width = min(slots or n, n)
        objective = FidoObjective(self.model, images[:width].clone(), targets[:width].clone(),
                                  self.config, seeds[:width])
        theta = objective.initial_theta().detach()
        adam = SlotAdam(theta, self.config.lr, self.config.adam_eps)
        holds = list(range(width))  # which input image each slot holds
        waiting = iter(range(width, n))
        results = _Results(n, self.config.mask_size, images.device)
        reference = torch.sigmoid(theta)
        while holds:
            ramp = (adam.steps / self.config.warmup).clamp(max=1.0) if self.config.warmup > 0 else torch.ones_like(adam.steps)
            coarseness = self.config.coarseness(adam.steps)
            theta.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective.loss(theta, ramp, coarseness), theta)
            theta = theta.detach()
            # a pooled cell's gradient, not its 1/f² share: Adam then moves the coarse logits
            # exactly as if they were the parameters
            adam.step(theta, grad * coarseness.square().view(1, -1, 1, 1).to(grad))
            refine_stages(theta, adam, coarseness, self.config.coarseness(adam.steps))
            finished, reference = self._finished(theta, adam.steps, reference)
            if not finished.any():
                continue
            rows = finished.nonzero().flatten()
            results.store([holds[int(r)] for r in rows], objective.outcome(theta[:, rows], rows),
                          adam.steps[rows])
            for row in rows.tolist():
                following = next(waiting, None)
                if following is None:
                    holds[row] = -1
                    continue
                holds[row] = following
                objective.admit(row, images[following], targets[following], seeds[following])
                theta[:, row] = 0
                reference[:, row] = 0.5
                adam.restart(row)
            if -1 in holds:
                live = torch.tensor([i for i, h in enumerate(holds) if h >= 0], dtype=torch.long,
                                    device=theta.device)
                objective.keep_rows(live)
                adam.keep_rows(live)
                theta, reference = theta[:, live], reference[:, live]
                holds = [h for h in holds if h >= 0]
        return results.attribution(targets)

    def _finished(self, theta: torch.Tensor, steps: torch.Tensor, reference: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots done after this step (all iterations, or masks settled), and the new reference
        keeps: with ``stop_change``, every ``STOP_CHECK_EVERY`` steps after the warm-up a slot whose
        keeps moved less than it on average (both maps, all cells) since the last check (or the
        start) has converged. The mean, not the largest change: a few cells on the mask's border
        keep oscillating under the sampling noise long after the mask has settled."""
        done = steps >= self.config.iterations
        tolerance = self.config.stop_change
        if tolerance is None:
            return done, reference
        check = (steps % STOP_CHECK_EVERY == 0) & (steps > self.config.warmup)
        if not check.any():
            return done, reference
        keep = torch.sigmoid(theta)
        change = (keep - reference).abs().mean(dim=(0, 2, 3))
        reference = torch.where(check.view(1, -1, 1, 1), keep, reference)
        return done | (check & (change < tolerance)), reference



def refine_stages(theta: torch.Tensor, adam: SlotAdam, before: torch.Tensor,
                  after: torch.Tensor) -> None:
    """For the slots whose stage just ended (coarseness ``before`` → ``after``), the logits and
    Adam's moments of the coarse cells, upsampled bilinearly to the next stage's cells."""
    for row in (before != after).nonzero().flatten().tolist():
        old, new = int(before[row]), int(after[row])
        for maps in (theta, adam.exp_avg, adam.exp_avg_sq):
            maps[:, row] = finer_cells(maps[:, row], old, new)


def finer_cells(maps: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """(..., M, M) maps constant on ``old``-cell blocks -> constant on ``new``-cell blocks,
    the block values resampled bilinearly (no seams of the coarse stage survive)."""
    m = maps.shape[-1]
    coarse = F.avg_pool2d(maps.unsqueeze(0), old)[0] if old > 1 else maps
    finer = resize_maps(coarse, (m // new, m // new))
    return finer.repeat_interleave(new, dim=-1).repeat_interleave(new, dim=-2)


class _Results:
    """The engine's output rows, filled in whatever order images finish."""

    def __init__(self, n: int, mask_size: int, device: torch.device) -> None:
        self.maps = {name: torch.zeros(n, mask_size, mask_size, device=device) for name in Fido.map_names}
        self.scalars = {name: torch.zeros(n, device=device) for name in Fido.scalar_names}

    def store(self, images: list[int], out: Attribution, steps: torch.Tensor) -> None:
        index = torch.tensor(images, dtype=torch.long, device=steps.device)
        for name, maps in self.maps.items():
            maps[index] = out.maps[name].float()
        for name, values in out.scalars.items():
            self.scalars[name][index] = values.float()
        self.scalars["iterations"][index] = steps.float()

    def attribution(self, targets: torch.Tensor) -> Attribution:
        return Attribution(targets, self.maps, self.scalars)


def mask_verdict(scalars: dict[str, float], target_prob: float) -> str:
    """"failed" when the SSR blend keeps less than half the target's clean probability, "ok"
    when it keeps more, "–" for methods without an SSR."""
    if "p_ssr" not in scalars:
        return "–"

    return "failed" if scalars["p_ssr"] < 0.5 * target_prob else "ok"
