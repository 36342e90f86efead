"""The explainable neural network (XNN; Qi, Khorram & Li, arXiv 1709.05360) of one class: a few
non-negative concepts of a frozen layer's feature vector that rebuild the class's logit.

    x (C,) --encoder--> z (k,) >= 0 --head--> ŷ = wᵀz + b   (≈ the classifier's logit)
                          \\--decoder--> x̂ (C,)            (sparse reconstruction)

Loss = α_pred·MSE(ŷ, y)/var(y) + α_rec·mean_j log(1 + q·mean_i (x̂_ij − x_ij)²) + α_pt·PT, where
the features are standardised and PT (pull-away) is the mean squared off-diagonal cosine
similarity of the concepts' contribution vectors z ⊙ w over a batch: concepts that always move
together are pushed apart. Neither this nor PT over images (EBGAN's reading) makes an XNN give
each part its own concept on a linear-head classifier: one concept mixing the parts is faithful,
and a second one of ~zero weight satisfies PT (tests/test_concepts.py's known-answer model;
bench/concepts.py measures it). The NMF baseline, which factorises the *spatial* activations,
does separate the parts there. The log penalty lets most features go unrebuilt; the contributions
zᵢwᵢ of an image sum to ŷ − b exactly, which is what a person reads.

The constants are ours (the paper's v3 could not be read here): Adam (lr 1e-2, 1,500 steps of 128
rows), a hidden width of 16 and weight decay 1e-3 (the group's public code: 1e-4; with 64 hidden
units and 1e-4 an XNN over-fitted 200 feature vectors, held-out R² 0.15 against a train R² of
0.99, tests/test_concepts.py's known-answer model), α = (1, 0.1, 0.1), q = 1; ``k`` per class is the smallest BIC-like
score n·log(validation MSE) + k·log(n) over k = 1..max_concepts, k counting only the concepts
that are alive (a concept zero on every training row is dropped after training).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class XnnConfig:
    """What decides a class's XNN (the data aside)."""

    max_concepts: int = 5
    hidden: int = 16
    steps: int = 1500  # Adam steps per XNN, each a random batch: the same work at any archive size
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-3
    alpha_pred: float = 1.0
    alpha_rec: float = 0.1
    alpha_pt: float = 0.1
    q: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class XNN(nn.Module):
    """One class's concepts on a ``channels``-wide feature vector."""

    def __init__(self, channels: int, concepts: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, concepts), nn.ReLU())
        self.head = nn.Linear(concepts, 1)
        self.decoder = nn.Sequential(nn.Linear(concepts, hidden), nn.ReLU(),
                                     nn.Linear(hidden, channels))
        with torch.no_grad():  # concepts start switched on: a ReLU that starts off may never learn
            self.encoder[2].bias.fill_(0.5)  # (bias 0: 2 of 6 known-answer classes at R² 0)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @property
    def concepts(self) -> int:
        return self.head.in_features

    def encode(self, pooled: torch.Tensor) -> torch.Tensor:
        """Concepts z (N, k) >= 0 of raw pooled features (N, C)."""
        return self.encoder((pooled - self.mean) / self.std)

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """zᵢ·wᵢ (N, k): each concept's share of the rebuilt logit."""
        return z * self.head.weight[0]

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, ŷ, x̂) with x̂ in standardised units."""
        z = self.encode(pooled)
        return z, self.head(z)[:, 0], self.decoder(z)


def pull_away(contributions: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine similarity of the k contribution vectors (columns, one
    value per image of the batch): concepts that always move together are pushed apart."""
    k = contributions.shape[1]
    if k < 2:
        return contributions.new_zeros(())
    unit = contributions / contributions.norm(dim=0, keepdim=True).clamp_min(1e-8)
    cosine = unit.T @ unit
    off = cosine - torch.diag(torch.diagonal(cosine))
    return (off ** 2).sum() / (k * (k - 1))


def xnn_loss(net: XNN, pooled: torch.Tensor, logit: torch.Tensor, logit_var: float,
             config: XnnConfig) -> torch.Tensor:
    z, predicted, rebuilt = net(pooled)
    standard = (pooled - net.mean) / net.std
    l_pred = ((predicted - logit) ** 2).mean() / logit_var
    l_rec = torch.log1p(config.q * ((rebuilt - standard) ** 2).mean(dim=0)).mean()
    return (config.alpha_pred * l_pred + config.alpha_rec * l_rec
            + config.alpha_pt * pull_away(net.contributions(z)))


@dataclass
class Fitted:
    """A trained XNN and how well it rebuilds the logit on the held-out features."""

    net: XNN
    val_mse: float
    val_r2: float
    bic: float


@contextmanager
def one_thread() -> Iterator[None]:
    """An XNN step is a few small matrix products: a second thread only adds synchronisation
    (equal seconds alone, and it stalls when another process shares the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_xnn(pooled: torch.Tensor, logit: torch.Tensor, held: torch.Tensor, concepts: int,
            config: XnnConfig) -> Fitted:
    """Train one XNN with ``concepts`` concepts on the rows not ``held`` out; score it on those
    that are."""
    with one_thread():
        return _fit_xnn(pooled, logit, held, concepts, config)


def _fit_xnn(pooled: torch.Tensor, logit: torch.Tensor, held: torch.Tensor, concepts: int,
             config: XnnConfig) -> Fitted:
    gen = torch.Generator().manual_seed(config.seed * 1009 + concepts)
    torch.manual_seed(config.seed * 1009 + concepts)
    train_x, train_y = pooled[~held], logit[~held]
    net = XNN(pooled.shape[1], concepts, config.hidden)
    net.mean.copy_(train_x.mean(dim=0))
    net.std.copy_(train_x.std(dim=0).clamp_min(1e-6))
    variance = float(train_y.var().clamp_min(1e-8))
    with torch.no_grad():  # start at the mean logit, in its units: Adam's steps need not get there
        net.head.bias.fill_(float(train_y.mean()))
        net.head.weight.mul_(variance ** 0.5)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 foreach=True)
    for _ in range(config.steps):
        batch = torch.randint(len(train_x), (min(config.batch_size, len(train_x)),), generator=gen)
        optimiser.zero_grad()
        xnn_loss(net, train_x[batch], train_y[batch], variance, config).backward()
        optimiser.step()
    net = prune(net.eval(), train_x)
    mse, r2 = held_out(net, pooled[held], logit[held])
    n = int(held.sum())
    return Fitted(net, mse, r2, n * math.log(max(mse, 1e-12)) + net.concepts * math.log(n))


@torch.no_grad()
def held_out(net: XNN, pooled: torch.Tensor, logit: torch.Tensor) -> tuple[float, float]:
    """(MSE, R²) of the rebuilt logit against the classifier's on held-out feature vectors."""
    mse = float(((net(pooled)[1] - logit) ** 2).mean())
    return mse, 1.0 - mse / max(float(logit.var(unbiased=False)), 1e-12)


SILENT = 0.02  # a concept below this share of a class's contributions says nothing of it


@torch.no_grad()
def prune(net: XNN, pooled: torch.Tensor) -> XNN:
    """``net`` without the concepts that are zero on every training row (a ReLU unit that died
    in training says nothing); the rest keep their weights. At least one concept stays."""
    return _keep(net, net.encode(pooled).amax(dim=0) > 0)


@torch.no_grad()
def drop_silent(net: XNN, own: torch.Tensor, floor: float = SILENT) -> XNN:
    """``net`` without the concepts whose mean contribution over the class's own feature
    vectors ``own`` is under ``floor`` of all concepts' (a concept a person would read as
    "+0.00"); each one's mean contribution moves into the bias, so the rebuilt logit of the
    class's images stays as it was on average."""
    share = net.contributions(net.encode(own)).mean(dim=0)
    keep = share.abs() >= floor * share.abs().sum().clamp_min(1e-12)
    small = _keep(net, keep)
    if small is not net:
        small.head.bias.add_(share[~keep].sum())
    return small


def _keep(net: XNN, keep: torch.Tensor) -> XNN:
    """The XNN of the concepts ``keep`` marks (``net`` itself when all or none are)."""
    if keep.all() or not keep.any():
        return net
    index = torch.nonzero(keep)[:, 0]
    small = XNN(net.mean.numel(), len(index), net.encoder[0].out_features)
    whole = ("encoder.0", "decoder.2", "mean", "std")  # the parts the concepts do not index
    small.load_state_dict({k: v for k, v in net.state_dict().items()
                           if k.rpartition(".")[0] in whole or k in whole}, strict=False)
    last, first = small.encoder[2], small.decoder[0]
    last.weight.copy_(net.encoder[2].weight[index])
    last.bias.copy_(net.encoder[2].bias[index])
    small.head.weight.copy_(net.head.weight[:, index])
    small.head.bias.copy_(net.head.bias)
    first.weight.copy_(net.decoder[0].weight[:, index])
    first.bias.copy_(net.decoder[0].bias)
    return small.eval()


def choose_xnn(pooled: torch.Tensor, logit: torch.Tensor, held: torch.Tensor,
               config: XnnConfig) -> tuple[Fitted, list[dict]]:
    """The XNN of the smallest BIC-like score over k = 1..max_concepts, and every k's scores
    (``trained``: the k it was trained with; ``concepts``: those alive after training)."""
    fits = [fit_xnn(pooled, logit, held, k, config) for k in range(1, config.max_concepts + 1)]
    table = [{"trained": k, "concepts": f.net.concepts, "val_mse": f.val_mse,
              "val_r2": f.val_r2, "bic": f.bic} for k, f in enumerate(fits, 1)]
    return min(fits, key=lambda f: f.bic), table
