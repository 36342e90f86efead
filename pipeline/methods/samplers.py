"""Keep-map samplers of FIDO: classic concrete dropout (CD) and simplified concrete dropout (SCD).

Convention everywhere in fidoflow: ``theta`` is the *keep-logit*, keep probability = sigmoid(theta).
Both samplers return a relaxed keep map ``z`` in (0, 1); the public SCD code mixes a keep and a
dropout convention (its SSR masks come out inverted), which this module avoids by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-7


def logistic_noise(u: torch.Tensor) -> torch.Tensor:
    """log(u) - log(1-u) for uniform ``u``: a standard logistic sample."""
    return torch.log(u + EPS) - torch.log(1.0 - u + EPS)


class _TailSafeSigmoid(torch.autograd.Function):
    """sigmoid whose gradient is sigmoid(x)·sigmoid(-x): it stays > 0 until |x| ≈ 88 in float32,
    where autograd's y·(1 - y) is exactly 0 as soon as y rounds to 1 (|x| ≳ 17)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x) * torch.sigmoid(-x)


def scd_keep(theta: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SCD: z = sigmoid((theta + logistic noise) / t); no sigmoid/log round trip, so the keep
    logit reaches the sigmoid unchanged and its gradient never vanishes where sigmoid saturates."""
    return _TailSafeSigmoid.apply((theta + logistic_noise(u)) / temperature)


def cd_keep(theta: torch.Tensor, u: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """CD as in FIDO: the dropout rate p = 1 - sigmoid(theta) is relaxed, the keep map is 1 - drop."""
    p = 1.0 - torch.sigmoid(theta)
    drop_logit = torch.log(p + EPS) - torch.log(1.0 - p + EPS) + logistic_noise(u)
    return 1.0 - torch.sigmoid(drop_logit / temperature)


@dataclass(frozen=True)
class Sampler:
    """A named keep-map sampler with its temperature."""

    name: str
    temperature: float

    def keep(self, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.name == "scd":
            return scd_keep(theta, u, self.temperature)
        return cd_keep(theta, u, self.temperature)


DEFAULT_TEMPERATURE = {"scd": 1.0, "cd": 0.1}


def make_sampler(name: str, temperature: float | None = None) -> Sampler:
    if name not in DEFAULT_TEMPERATURE:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(DEFAULT_TEMPERATURE)}")
    return Sampler(name, DEFAULT_TEMPERATURE[name] if temperature is None else temperature)
