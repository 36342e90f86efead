"""The FIDO engine on a toy classifier whose evidence is a known square."""

import pytest
import torch

from fidoflow.pipeline.methods.fido import Fido, FidoConfig
from tests.conftest import SQUARE, square_image

TOY = {"samples": 4, "iterations": 60, "mask_size": 32, "lr": 0.3, "l1": 40.0, "tv": 8.0,
       "infill": "mean"}


def square_mass(maps: torch.Tensor) -> torch.Tensor:
    return maps[:, SQUARE[0], SQUARE[1]].sum(dim=(1, 2)) / maps.sum(dim=(1, 2))


@pytest.mark.parametrize(("sampler", "stages"), [("scd", 1), ("cd", 1), ("scd", 3)])
def test_ssr_keeps_and_sdr_drops_the_evidence(square_model, sampler: str, stages: int) -> None:
    config = FidoConfig(sampler=sampler, stages=stages, **TOY)
    with Fido(square_model, config) as fido:
        out = fido.attribute(square_image(), torch.tensor([1]), seeds=[5])
    assert square_mass(out.maps["ssr"]).item() >= 0.8
    assert square_mass(out.maps["sdr"]).item() >= 0.8
    assert square_mass(out.maps["joint"]).item() >= 0.8
    assert out.scalars["p_ssr"].item() > 0.5 > out.scalars["p_sdr"].item()


def test_masks_do_not_depend_on_batch_partners(square_model) -> None:
    config = FidoConfig(**{**TOY, "iterations": 10})
    a = square_image()
    b = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with Fido(square_model, config) as fido:
        alone = fido.attribute(a, torch.tensor([1]), seeds=[11])
        batched = fido.attribute(torch.cat([b, a]), torch.tensor([0, 1]), seeds=[12, 11])
    torch.testing.assert_close(alone.maps["ssr"][0], batched.maps["ssr"][1], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.maps["sdr"][0], batched.maps["sdr"][1], atol=1e-5, rtol=0)


def test_same_seed_same_masks_other_seed_other_masks(square_model) -> None:
    config = FidoConfig(**{**TOY, "iterations": 5})
    with Fido(square_model, config) as fido:
        first = fido.attribute(square_image(), torch.tensor([1]), seeds=[1]).maps["joint"]
        again = fido.attribute(square_image(), torch.tensor([1]), seeds=[1]).maps["joint"]
        other = fido.attribute(square_image(), torch.tensor([1]), seeds=[2]).maps["joint"]
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


def test_lo_cap_stops_rewarding_a_region_once_it_is_sufficient(square_model) -> None:
    """With the whole image kept the SSR is far above the cap: its evidence gradient vanishes,
    while the uncapped objective keeps rewarding more keep."""
    from fidoflow.pipeline.methods.fido import FidoObjective

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
    assert torch.equal(a.maps["joint"], b.maps["joint"])


@pytest.mark.parametrize("stages", [1, 3])
@pytest.mark.parametrize("stop_change", [None, 0.05])
@pytest.mark.parametrize("slots", [1, 2])
def test_continuous_batching_gives_each_image_its_own_masks(square_model, slots: int, stop_change,
                                                            stages: int) -> None:
    """Whatever the slots and whenever partners leave (so that slots sit in different stages),
    an image's masks and step count are those it gets alone."""
    config = FidoConfig(**{**TOY, "iterations": 25, "stop_change": stop_change, "stages": stages})
    images = torch.cat([square_image(), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))])
    targets, seeds = torch.tensor([1, 0, 1]), [7, 8, 9]
    with Fido(square_model, config) as fido:
        together = fido.attribute(images, targets, seeds, batch_size=slots)
        alone = [fido.attribute(images[i:i + 1], targets[i:i + 1], seeds[i:i + 1]) for i in range(3)]
    for i, single in enumerate(alone):
        torch.testing.assert_close(together.maps["ssr"][i], single.maps["ssr"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.maps["sdr"][i], single.maps["sdr"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.scalars["p_ssr"][i], single.scalars["p_ssr"][0], atol=1e-5, rtol=0)
        assert together.scalars["iterations"][i] == single.scalars["iterations"][0]


@pytest.mark.parametrize(("stop_change", "expected"), [(None, 40), (0.0, 40), (1.0, 10)])
def test_early_stop_leaves_when_masks_settle_and_never_before_a_check(square_model, stop_change, expected) -> None:
    """A tolerance of 1 stops at the first check after the warm-up (step 10); 0 never stops."""
    config = FidoConfig(**{**TOY, "iterations": 40, "warmup": 5, "stop_change": stop_change})
    with Fido(square_model, config) as fido:
        out = fido.attribute(square_image(), torch.tensor([1]), seeds=[1])
    assert out.scalars["iterations"].tolist() == [expected]


def test_slot_adam_is_torch_adam_when_slots_start_together() -> None:
    from fidoflow.pipeline.methods.fido import SlotAdam

    target = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = torch.zeros(2, 3, 4, 4)
    theirs = torch.zeros(2, 3, 4, 4, requires_grad=True)
    slot_adam, adam = SlotAdam(ours, lr=0.3, eps=1e-3), torch.optim.Adam([theirs], lr=0.3, eps=1e-3)
    for _ in range(7):
        adam.zero_grad()
        ((theirs - target) ** 2).sum().backward()
        adam.step()
        slot_adam.step(ours, 2 * (ours - target))
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-6)


def test_stages_run_coarse_to_fine_with_iterations_split_evenly() -> None:
    config = FidoConfig(mask_size=112, stages=3, iterations=30)
    steps = torch.tensor([0.0, 9.0, 10.0, 19.0, 20.0, 29.0, 30.0])
    assert config.coarseness(steps).tolist() == [4, 4, 2, 2, 1, 1, 1]
    assert FidoConfig().coarseness(steps).tolist() == [1] * 7
    with pytest.raises(ValueError, match="halved"):
        FidoConfig(mask_size=28, stages=4)
    with pytest.raises(ValueError, match="iterations"):
        FidoConfig(mask_size=32, stages=3, iterations=2)


def test_a_new_stage_starts_from_the_last_ones_logits_upsampled_bilinearly() -> None:
    from fidoflow.pipeline.imaging.filters import resize_maps
    from fidoflow.pipeline.methods.fido import finer_cells

    coarse = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    blocks = coarse.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 8x8, 4x4-cell blocks
    finer = finer_cells(blocks[None], old=4, new=2)[0]
    expected = resize_maps(coarse, (4, 4)).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(finer, expected)
    torch.testing.assert_close(finer_cells(blocks[None], old=4, new=1)[0], resize_maps(coarse, (8, 8)))


def test_the_demo_calls_a_mask_failed_when_its_ssr_keeps_under_half_the_probability() -> None:
    from fidoflow.pipeline.methods.fido import mask_verdict

    assert mask_verdict({"p_ssr": 0.33, "p_sdr": 0.1}, 0.79) == "failed"  # chelsea, old defaults
    assert mask_verdict({"p_ssr": 0.5}, 0.79) == "ok"
    assert mask_verdict({}, 0.79) == "–"


def test_the_ssr_floor_keeps_a_sufficient_region_against_a_strong_sparsity_penalty() -> None:
    from tests.conftest import SquareEvidence

    model, image, target = SquareEvidence(gain=8.0), square_image(), torch.tensor([1])
    with torch.no_grad():
        clean = model(image).softmax(dim=1)[0, 1].item()
    outcomes = {}
    for l1, floor in [(200.0, None), (200.0, 0.5), (40.0, None), (40.0, 0.5)]:
        with Fido(model, FidoConfig(**{**TOY, "l1": l1, "ssr_floor": floor})) as fido:
            outcomes[l1, floor] = fido.attribute(image, target, seeds=[3])
    assert outcomes[200.0, None].scalars["p_ssr"].item() < 0.5 * clean  # the penalty wins...
    # ...down to the floor, not past it: the balance sits at the floor (the samples' mean), the
    # deterministic blend within a tenth of it
    assert outcomes[200.0, 0.5].scalars["p_ssr"].item() >= 0.9 * 0.5 * clean
    # a floor that never binds changes nothing
    assert torch.equal(outcomes[40.0, None].maps["joint"], outcomes[40.0, 0.5].maps["joint"])
