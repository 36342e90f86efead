"""The FIDO engine on a toy classifier whose evidence is a known square."""

import pytest
import torch

from pipeline.fido import Fido, FidoConfig, total_variation
from tests.conftest import SQUARE, square_image

TOY = {"samples": 4, "iterations": 60, "mask_size": 32, "lr": 0.3, "l1": 40.0, "tv": 4.0,
       "infill": "mean"}


def square_mass(maps: torch.Tensor) -> torch.Tensor:
    return maps[:, SQUARE[0], SQUARE[1]].sum(dim=(1, 2)) / maps.sum(dim=(1, 2))


@pytest.mark.parametrize("sampler", ["scd", "cd"])
def test_ssr_keeps_and_sdr_drops_the_evidence(square_model, sampler: str) -> None:
    config = FidoConfig(sampler=sampler, **TOY)
    with Fido(square_model, config) as fido:
        out = fido.attribute(square_image(), torch.tensor([1]), seeds=[5])
    assert square_mass(out.ssr).item() >= 0.8
    assert square_mass(out.sdr).item() >= 0.8
    assert square_mass(out.joint).item() >= 0.8
    assert out.p_ssr.item() > 0.5 > out.p_sdr.item()


def test_masks_do_not_depend_on_batch_partners(square_model) -> None:
    config = FidoConfig(**{**TOY, "iterations": 10})
    a = square_image()
    b = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with Fido(square_model, config) as fido:
        alone = fido.attribute(a, torch.tensor([1]), seeds=[11])
        batched = fido.attribute(torch.cat([b, a]), torch.tensor([0, 1]), seeds=[12, 11])
    torch.testing.assert_close(alone.ssr[0], batched.ssr[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.sdr[0], batched.sdr[1], atol=1e-5, rtol=0)


def test_same_seed_same_masks_other_seed_other_masks(square_model) -> None:
    config = FidoConfig(**{**TOY, "iterations": 5})
    with Fido(square_model, config) as fido:
        first = fido.attribute(square_image(), torch.tensor([1]), seeds=[1]).joint
        again = fido.attribute(square_image(), torch.tensor([1]), seeds=[1]).joint
        other = fido.attribute(square_image(), torch.tensor([1]), seeds=[2]).joint
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_classifier_is_frozen_inside_and_restored_after(square_model) -> None:
    square_model.train()
    with Fido(square_model, FidoConfig(**{**TOY, "iterations": 2})) as fido:
        assert not square_model.training
        assert not any(p.requires_grad for p in square_model.parameters())
        fido.attribute(square_image(), torch.tensor([1]))
    assert square_model.training
    assert all(p.requires_grad for p in square_model.parameters())
    assert square_model.gain.grad is None


def test_total_variation_of_constant_is_zero_and_of_checkerboard_is_two() -> None:
    flat = torch.ones(2, 6, 6)
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2
    assert torch.all(total_variation(flat) == 0)
    assert total_variation(checker.float()[None]).item() == pytest.approx(2.0)


def test_lo_cap_stops_rewarding_a_region_once_it_is_sufficient(square_model) -> None:
    """With the whole image kept the SSR is far above the cap: its evidence gradient vanishes,
    while the uncapped objective keeps rewarding more keep."""
    from pipeline.fido import FidoObjective

    def ssr_grad(cap: float | None) -> torch.Tensor:
        config = FidoConfig(**{**TOY, "lo_cap": cap})
        objective = FidoObjective(square_model, square_image(), torch.tensor([1]), config, [3])
        theta = torch.full_like(objective.initial_theta(), 6.0).requires_grad_(True)
        objective.data_term(theta, objective.draw_noise()).sum().backward()
        return theta.grad[0]

    assert ssr_grad(2.0).abs().max() == 0
    assert ssr_grad(None).abs().max() > 0


def test_a_huge_cap_is_the_plain_objective(square_model) -> None:
    plain = FidoConfig(**{**TOY, "iterations": 4, "lo_cap": None})
    capped = FidoConfig(**{**TOY, "iterations": 4, "lo_cap": 1e9})
    with Fido(square_model, plain) as fido:
        a = fido.attribute(square_image(), torch.tensor([1]), seeds=[4])
    with Fido(square_model, capped) as fido:
        b = fido.attribute(square_image(), torch.tensor([1]), seeds=[4])
    assert torch.equal(a.joint, b.joint)
