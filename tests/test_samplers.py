"""Properties of the CD and SCD keep-map samplers."""

import pytest
import torch

from fidoflow.pipeline.methods.samplers import cd_keep, make_sampler, scd_keep


def test_scd_gradient_matches_finite_differences() -> None:
    theta = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    u = torch.rand(4, 5, dtype=torch.float64).clamp(0.01, 0.99)
    assert torch.autograd.gradcheck(lambda t: scd_keep(t, u, 1.0), (theta,))
    assert torch.autograd.gradcheck(lambda t: scd_keep(t, u, 0.3), (theta,))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_cd_and_scd_agree_at_equal_temperature_for_small_theta(temperature: float) -> None:
    """CD relaxes the dropout rate with noise n, SCD the keep logit with -n: same law, mirrored u."""
    gen = torch.Generator().manual_seed(0)
    theta = (torch.rand(64, generator=gen) * 4 - 2).requires_grad_(True)
    u = torch.rand(64, generator=gen).clamp(0.05, 0.95)
    cd = cd_keep(theta, u, temperature)
    scd = scd_keep(theta, 1 - u, temperature)
    torch.testing.assert_close(cd, scd, atol=1e-4, rtol=1e-4)
    (g_cd,) = torch.autograd.grad(cd.sum(), theta)
    (g_scd,) = torch.autograd.grad(scd.sum(), theta)
    torch.testing.assert_close(g_cd, g_scd, atol=1e-3, rtol=1e-3)


def test_scd_gradient_survives_where_cd_saturates() -> None:
    theta = torch.full((8,), 20.0, requires_grad=True)
    u = torch.full((8,), 0.5)
    (g_cd,) = torch.autograd.grad(cd_keep(theta, u, 1.0).sum(), theta)
    (g_scd,) = torch.autograd.grad(scd_keep(theta, u, 1.0).sum(), theta)
    assert torch.all(g_cd == 0)
    assert torch.all(g_scd > 0)


@pytest.mark.parametrize("name", ["scd", "cd"])
def test_keep_probability_is_sigmoid_theta(name: str) -> None:
    """The mean keep of many draws follows sigmoid(theta): one sign convention for both."""
    sampler = make_sampler(name, temperature=1.0)
    theta = torch.tensor([-2.0, 0.0, 2.0]).view(3, 1).expand(3, 20000)
    u = torch.rand(3, 20000, generator=torch.Generator().manual_seed(3))
    hard = (sampler.keep(theta, u) > 0.5).float().mean(dim=1)
    torch.testing.assert_close(hard, torch.sigmoid(theta[:, 0]), atol=0.02, rtol=0)


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("dropout")
