"""The concept baseline beside XNN: CRAFT's idea (Fel et al., CVPR 2023) on the same layer.
A class's spatial activations (one row per image position, ``(M, C)``, clipped at 0) are
factorised as ``A ≈ U·H`` with ``U, H >= 0``: the rows of ``H (k, C)`` are the class's concepts;
an image's coefficients ``U (h·w, k)`` for fixed ``H`` are where each concept is, i.e. its map.
A concept's importance to the class score is the gradient of the logit times the concept's part
of the activations (exact where the network is linear after the layer, as class-map networks and
EfficientNet's pooled head are); CRAFT's Sobol indices would cost many forward passes more.

Multiplicative updates (Lee & Seung 2001) from the successive projection algorithm's rows, in
torch: a few thousand rows of a few hundred
channels factorise in well under a second, and no new dependency is needed.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def fit_nmf(activations: torch.Tensor, concepts: int, iterations: int = 300,
            seed: int = 0) -> torch.Tensor:
    """The concept bank ``H (k, C)`` of non-negative ``activations (M, C)``; rows of unit norm."""
    a = activations.clamp_min(0).double()
    gen = torch.Generator().manual_seed(seed)
    h = a[extreme_rows(a, concepts)] + EPS
    u = project(a, h.float(), 20).double() + 1e-3 * torch.rand(len(a), concepts, generator=gen,
                                                               dtype=torch.float64)
    for _ in range(iterations):
        h *= (u.T @ a) / (u.T @ u @ h + EPS)
        u *= (a @ h.T) / (u @ (h @ h.T) + EPS)
    h = h / h.norm(dim=1, keepdim=True).clamp_min(EPS)
    return h.float()


def extreme_rows(a: torch.Tensor, k: int) -> list[int]:
    """The successive projection algorithm's k rows (Gillis & Vavasis 2014): the largest row,
    then each time the row largest once the chosen ones are projected out. A start from these
    keeps a dominant part from taking two concepts (random starts gave two copies of the wing
    and none for the crown on the known-answer model)."""
    residual, chosen = a.clone(), []
    for _ in range(min(k, len(a))):
        i = int(residual.norm(dim=1).argmax())
        chosen.append(i)
        direction = residual[i] / residual[i].norm().clamp_min(EPS)
        residual -= (residual @ direction)[:, None] * direction
    return chosen + chosen[:1] * (k - len(chosen))


def project(activations: torch.Tensor, bank: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Non-negative coefficients ``U (M, k)`` with ``activations ≈ U·bank`` (``bank`` fixed)."""
    a = activations.clamp_min(0).double()
    h = bank.double()
    gram = h @ h.T
    u = (a @ h.T).clamp_min(EPS) / (gram.sum(dim=1) + EPS)
    for _ in range(iterations):
        u *= (a @ h.T) / (u @ gram + EPS)
    return u.float()
