"""The spatial XNN: this project's step beyond the pooled XNN (pipeline/concepts/xnn.py) of Qi,
Khorram & Li. The pooled model reads one feature vector per image, so where two parts appear in
every image of a class one mixed concept rebuilds the logit and nothing asks for two. This one
reads the feature map at each position, so a concept is *where* something is:

    x(p) (C,) --1×1 encoder--> z(p) (k,) >= 0     (the concept maps, no backprop needed)
    ŷ = wᵀ mean_p z(p) + b                         (≈ the classifier's logit: Σ contributions)
    ê(p) = D z(p)                                  (rebuilds the class's evidence at p)

The evidence is e(p) = v ⊙ x(p), v the ridge regression of the class's logit on the pooled
features (the head's weights, exactly, where the network is linear after pooling): features the
class does not use need no concept. Loss, each term relative to its target's spread:
- MSE(ŷ, y) over every image, and ALPHA_OWN times it over the class's own (its within-class
  variation is what an explanation of its images must rebuild; the background's logits span
  far more);
- ALPHA_DENSITY·MSE of the head read at each position, wᵀz(p) + b, against the logit density
  Σ_c e_c(p) + c: one target per position, not per image, so the concepts carry the logit
  where it arises (on the trained fine benchmark, R² on new scenes: 0.54 with neither of these
  two terms, 0.67 with the own one alone, 0.94 with both; RESULTS);
- ALPHA_REC·‖ê − e‖²/‖e‖² over the class's own positions;
- ALPHA_PT·PT, PT the pull-away of the concept maps over positions (two concepts that fire at
  the same places are pushed apart).

Trained from the factorisation the NMF baseline would make of the evidence: the encoder is
first taught the NMF coefficients, the head is fitted by least squares, then all is trained
together. From random starts the same loss
separated the parts on 0 to 4 of the known-answer model's 6 classes, depending on the seed
(bench/RESULTS.md, "A spatial XNN").

``k``: the smallest BIC-like score n·log(max(err, NOISE)) + k·log(n) over k = 1..max, err the
held-out faithfulness on the class's own images plus the held-out evidence rebuilt, so a k
that only fits noise is not taken (a pooled model's k, by faithfulness alone, is 1 wherever
one concept is faithful).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fidoflow.pipeline.concepts.nmf import fit_nmf, project
from fidoflow.pipeline.concepts.xnn import SILENT, XnnConfig, one_thread

ALPHA_OWN = 1.0
ALPHA_DENSITY = 1.0
ALPHA_REC = 1.0
ALPHA_PT = 1.0
NOISE = 0.05  # held-out error (a 20th of the evidence) below which a larger k fits noise
OWN_BATCH = 32  # own images per step whose evidence is rebuilt (the step's other batch: any)
SHARPNESS = 5.0  # softplus β of the concepts: near a ReLU, yet a concept never dies in training


class SpatialXNN(nn.Module):
    """One class's k concepts of a ``channels``-deep feature map (see the module docstring)."""

    def __init__(self, channels: int, concepts: int, hidden: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                     nn.Conv2d(hidden, concepts, 1), nn.Softplus(SHARPNESS))
        self.head = nn.Linear(concepts, 1)
        self.decoder = nn.Conv2d(concepts, channels, 1)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("evidence", torch.ones(channels))  # v: the class's use of a channel
        self.register_buffer("scale", torch.ones(()))  # the evidence's spread: ê in its units

    @property
    def concepts(self) -> int:
        return self.head.in_features

    def encode(self, spatial: torch.Tensor) -> torch.Tensor:
        """Concept maps z (N, k, h, w) >= 0 of raw features (N, C, h, w)."""
        return self.encoder((spatial - self.mean[:, None, None]) / self.std[:, None, None])

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """zᵢ·wᵢ (N, k) of concept maps: each concept's share of the rebuilt logit."""
        return z.mean(dim=(2, 3)) * self.head.weight[0]

    def rebuilt(self, z: torch.Tensor) -> torch.Tensor:
        """The logit ŷ (N,) of concept maps."""
        return self.head(z.mean(dim=(2, 3)))[:, 0]

    def density(self, z: torch.Tensor) -> torch.Tensor:
        """The head read at each position (N, h, w): where the rebuilt logit arises (its mean
        over the positions is ``rebuilt``)."""
        return torch.einsum("nkhw,k->nhw", z, self.head.weight[0]) + self.head.bias

    def class_evidence(self, spatial: torch.Tensor) -> torch.Tensor:
        return spatial * self.evidence[:, None, None]


def ridge(pooled: torch.Tensor, logit: torch.Tensor, strength: float = 1e-3) -> torch.Tensor:
    """v (C,) of logit ≈ v·pooled + c, ridge-regularised by ``strength`` of the mean variance."""
    x = pooled.double() - pooled.double().mean(dim=0)
    y = logit.double() - logit.double().mean()
    gram = x.T @ x / len(x)
    lam = strength * float(torch.trace(gram)) / len(gram)
    return torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype),
                              x.T @ y / len(x)).float()


def map_pull_away(z: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine similarity of the k concept maps over every position of
    the batch: concepts that fire at the same places are pushed apart."""
    k = z.shape[1]
    if k < 2:
        return z.new_zeros(())
    columns = z.transpose(0, 1).reshape(k, -1)
    unit = columns / columns.norm(dim=1, keepdim=True).clamp_min(1e-8)
    cosine = unit @ unit.T
    return ((cosine - torch.diag(torch.diagonal(cosine))) ** 2).sum() / (k * (k - 1))


@dataclass(frozen=True)
class SpatialData:
    """One class's training maps: ``spatial`` (N, C, h, w), the class's ``logit`` (N,), ``own``
    (N,) its own images, ``held`` (N,) the held-out ones; ``evidence`` v (C,)."""

    spatial: torch.Tensor
    logit: torch.Tensor
    own: torch.Tensor
    held: torch.Tensor
    evidence: torch.Tensor


@dataclass
class SpatialFit:
    net: SpatialXNN
    val_r2: float
    error: float  # held-out faithfulness term + evidence rebuilt (relative)
    bic: float


def relative_rebuild(net: SpatialXNN, spatial: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖ê − e‖² / ‖e‖² of a batch of the class's own maps."""
    target = net.class_evidence(spatial)
    return ((net.decoder(z) * net.scale - target) ** 2).sum() / (target ** 2).sum().clamp_min(
        1e-12)


@torch.no_grad()
def logit_density(net: SpatialXNN, data: SpatialData, train: torch.Tensor) -> torch.Tensor:
    """(N, h, w): the class's evidence summed over the channels at each position, offset so that
    its mean over an image's positions is the logit (on average over the training rows)."""
    density = net.class_evidence(data.spatial).sum(dim=1)
    return density + (data.logit[train] - density[train].mean(dim=(1, 2))).mean()


def _start(net: SpatialXNN, data: SpatialData, train: torch.Tensor, config: XnnConfig,
           gen: torch.Generator) -> None:
    """The encoder taught the NMF coefficients of the class's evidence and the head fitted by
    least squares: training begins with the parts apart."""
    channels, k = data.spatial.shape[1], net.concepts
    rows = net.class_evidence(data.spatial).clamp_min(0).permute(0, 2, 3, 1).reshape(-1, channels)
    per_image = rows.shape[0] // len(data.spatial)
    own_rows = data.own.repeat_interleave(per_image)
    bank = fit_nmf(rows[own_rows & train.repeat_interleave(per_image)], k, seed=config.seed)
    target = project(rows, bank).view(len(data.spatial), *data.spatial.shape[2:], k)
    target = target.permute(0, 3, 1, 2)
    target = target / target[data.own].std().clamp_min(1e-8)
    optimiser = torch.optim.Adam(net.encoder.parameters(), lr=config.lr, foreach=True)
    rows_train = torch.nonzero(train)[:, 0]
    for _ in range(config.steps // 2):
        batch = rows_train[torch.randint(len(rows_train), (config.batch_size // 2,), generator=gen)]
        z = net.encode(data.spatial[batch])
        loss = (((z - target[batch]) ** 2).sum(dim=(0, 2, 3))
                / (target[batch] ** 2).sum(dim=(0, 2, 3)).clamp_min(1e-9)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        pooled = net.encode(data.spatial[train]).mean(dim=(2, 3))
        design = torch.cat([pooled, torch.ones(len(pooled), 1)], dim=1).double()
        solution = torch.linalg.lstsq(design, data.logit[train, None].double()).solution[:, 0]
        net.head.weight.copy_(solution[:k].float()[None])
        net.head.bias.fill_(float(solution[k]))


def fit_spatial_xnn(data: SpatialData, concepts: int, config: XnnConfig) -> SpatialFit:
    """Train one spatial XNN with ``concepts`` concepts on the rows not held out; score it on
    those that are."""
    with one_thread():
        return _fit(data, concepts, config)


def _fit(data: SpatialData, concepts: int, config: XnnConfig) -> SpatialFit:
    gen = torch.Generator().manual_seed(config.seed * 1009 + concepts)
    torch.manual_seed(config.seed * 1009 + concepts)
    train = ~data.held
    net = SpatialXNN(data.spatial.shape[1], concepts, config.hidden)
    net.mean.copy_(data.spatial[train].mean(dim=(0, 2, 3)))
    net.std.copy_(data.spatial[train].std(dim=(0, 2, 3)).clamp_min(1e-6))
    net.evidence.copy_(data.evidence)
    net.scale.fill_(float(net.class_evidence(data.spatial[data.own & train]).std().clamp_min(
        1e-8)))
    _start(net, data, train, config, gen)
    variance = float(data.logit[train].var().clamp_min(1e-8))
    own_variance = float(data.logit[train & data.own].var().clamp_min(1e-8))
    target = logit_density(net, data, train)
    density_variance = float(target[train].var().clamp_min(1e-8))
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 foreach=True)
    rows, own = torch.nonzero(train)[:, 0], torch.nonzero(train & data.own)[:, 0]
    for _ in range(config.steps // 4):
        batch = rows[torch.randint(len(rows), (config.batch_size // 2,), generator=gen)]
        mine = own[torch.randint(len(own), (OWN_BATCH,), generator=gen)]
        density = net.density(net.encode(data.spatial[batch]))  # its mean: the rebuilt logit
        z_own = net.encode(data.spatial[mine])
        loss = (config.alpha_pred * ((density.mean(dim=(1, 2)) - data.logit[batch]) ** 2).mean()
                / variance
                + ALPHA_OWN * ((net.rebuilt(z_own) - data.logit[mine]) ** 2).mean() / own_variance
                + ALPHA_DENSITY * ((density - target[batch]) ** 2).mean() / density_variance
                + ALPHA_REC * relative_rebuild(net, data.spatial[mine], z_own)
                + ALPHA_PT * map_pull_away(z_own))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net = net.eval()
    r2, error = held_out_maps(net, data)
    n = int(data.held.sum())
    return SpatialFit(net, r2, error, n * math.log(max(error, NOISE)) + concepts * math.log(n))


@torch.no_grad()
def held_out_maps(net: SpatialXNN, data: SpatialData) -> tuple[float, float]:
    """(R², error) on the held-out maps of the class's own images (all held-out maps where
    fewer than two are its own): R² of the rebuilt logit against the classifier's; error =
    1 − R² + the class's evidence not rebuilt. Its own: an explanation of its images must
    follow their logits, and on the background's, whose logits span far more, a fit that only
    tells the class from the rest scores R² 0.9 (a k of 1 was taken at R² 0.2 on its own)."""
    mine = data.held & data.own
    rows = mine if int(mine.sum()) >= 2 else data.held
    logit = data.logit[rows]
    mse = float(((net.rebuilt(net.encode(data.spatial[rows])) - logit) ** 2).mean())
    r2 = 1.0 - mse / max(float(logit.var(unbiased=False)), 1e-12)
    rebuild = (float(relative_rebuild(net, data.spatial[mine], net.encode(data.spatial[mine])))
               if mine.any() else 0.0)
    return r2, (1.0 - r2) + rebuild


def choose_spatial_xnn(data: SpatialData, config: XnnConfig) -> tuple[SpatialFit, list[dict]]:
    """The spatial XNN of the smallest BIC-like score over k = 1..max_concepts, and the scores
    of every k tried: none after the first whose error is under NOISE (every larger k scores
    worse than it)."""
    fits: list[SpatialFit] = []
    for k in range(1, config.max_concepts + 1):
        fits.append(fit_spatial_xnn(data, k, config))
        if fits[-1].error <= NOISE:
            break
    table = [{"trained": k, "concepts": f.net.concepts, "val_r2": f.val_r2, "error": f.error,
              "bic": f.bic} for k, f in enumerate(fits, 1)]
    return min(fits, key=lambda f: f.bic), table


@torch.no_grad()
def drop_silent_maps(net: SpatialXNN, own: torch.Tensor, floor: float = SILENT) -> SpatialXNN:
    """``net`` without the concepts whose mean contribution over the class's own maps is under
    ``floor`` of all concepts'; their mean contribution moves into the bias."""
    share = net.contributions(net.encode(own)).mean(dim=0)
    keep = share.abs() >= floor * share.abs().sum().clamp_min(1e-12)
    if keep.all() or not keep.any():
        return net
    index = torch.nonzero(keep)[:, 0]
    small = SpatialXNN(net.mean.numel(), len(index), net.encoder[0].out_channels)
    state = net.state_dict()
    for name in ("encoder.2.weight", "encoder.2.bias", "decoder.weight"):
        state[name] = state[name][index] if name.startswith("encoder") else state[name][:, index]
    state["head.weight"] = state["head.weight"][:, index]
    state["head.bias"] = state["head.bias"] + share[~keep].sum()
    small.load_state_dict(state)
    return small.eval()
