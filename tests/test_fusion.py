"""Folding a frozen classifier: same logits and input gradients, original untouched, safe fallback."""

import copy

import pytest
import torch
from torch import nn

from fidoflow.pipeline.models.device import prepare_module
from fidoflow.pipeline.models.fusion import fuse_frozen
from fidoflow.pipeline.models.loading import load_model


@pytest.fixture(scope="module", params=["efficientnet-lite0", "synthetic-cnn"])
def loaded(request):
    return load_model(request.param)


def batchnorms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def test_fused_model_has_the_same_logits_and_input_gradients(loaded) -> None:
    """Exact in float64; in float32 ReLU6 kinks flip on rounding, so gradients agree in norm."""
    x = torch.rand(3, 3, *loaded.input_size, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(loaded.module).double().eval()
    fused, report = fuse_frozen(original, x[:2].double())
    assert report.kept_original is None and report.batchnorms == batchnorms(original) > 0
    assert batchnorms(fused) == 0
    outputs = []
    for module in (original, fused):
        inputs = x.double().requires_grad_(True)
        logits = module(inputs)
        logits[:, 1].sum().backward()
        outputs.append((logits.detach(), inputs.grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-9, atol=1e-12)


def test_original_module_is_left_as_it_was(loaded) -> None:
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    count = batchnorms(loaded.module)
    fuse_frozen(loaded.module, torch.rand(1, 3, *loaded.input_size))
    assert batchnorms(loaded.module) == count
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_symmetric_same_paddings_fold_and_asymmetric_ones_stay() -> None:
    loaded = load_model("efficientnet-lite0")
    fused, report = fuse_frozen(loaded.module, torch.rand(1, 3, 224, 224))
    pads = [m.static_padding.padding for m in fused.modules() if isinstance(getattr(m, "static_padding", None), nn.ZeroPad2d)]
    assert report.paddings > 0
    assert pads and all(p[0] != p[1] or p[2] != p[3] for p in pads)  # only the stride-2 (0, 1, 0, 1) ones remain


def test_untraceable_model_is_kept_with_a_reason() -> None:
    class DataDependent(nn.Module):  # control flow on values: symbolic tracing cannot follow it
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y

    model = DataDependent().eval()
    module, report = fuse_frozen(model, torch.rand(1, 3, 8, 8))
    assert module is model and report.kept_original.startswith("not traceable")


def test_a_fold_that_changes_the_output_is_refused() -> None:
    class ZeroPadThenConv(nn.Conv2d):  # looks like a SAME conv but pads twice on purpose
        def __init__(self) -> None:
            super().__init__(3, 4, 3)
            self.static_padding = nn.ZeroPad2d(1)

        def forward(self, x):
            return super().forward(self.static_padding(self.static_padding(x)))

    model = nn.Sequential(ZeroPadThenConv(), nn.ReLU()).eval()
    module, report = fuse_frozen(model, torch.rand(1, 3, 8, 8))
    assert module is model and "disagreed" in report.kept_original


def test_prepared_module_is_channels_last_and_agrees(loaded) -> None:
    x = torch.rand(2, 3, *loaded.input_size)
    prepared = prepare_module(loaded.module, torch.device("cpu"), input_size=loaded.input_size)
    torch.testing.assert_close(prepared(x), loaded.module(x), rtol=1e-4, atol=1e-4)
    assert loaded.on(torch.device("cpu")) is loaded.on(torch.device("cpu"))
