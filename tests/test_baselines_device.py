"""Grad-CAM through captum, and device selection."""

import pytest
import torch

from fidoflow.pipeline.archive.synthetic import make_dataset
from fidoflow.pipeline.methods.gradcam import GradCam, GradCamConfig
from fidoflow.pipeline.metrics.box import share_inside
from fidoflow.pipeline.models.device import prepare_module, resolve_device
from fidoflow.pipeline.models.synthetic_cnn import load_synthetic_classifier


def test_gradcam_maps_are_normalised_and_favour_the_object() -> None:
    model, _ = load_synthetic_classifier()
    data = make_dataset(8, seed=77)
    with GradCam(model, GradCamConfig(model.gradcam_layer)) as cam:
        out = cam.attribute(data.images, data.labels)
    assert out.maps["joint"].shape == (8, 12, 12)
    assert out.maps["joint"].min() >= 0 and torch.allclose(out.maps["joint"].flatten(1).amax(1), torch.ones(8))
    area = data.object_boxes.float()
    area = ((area[:, 2] - area[:, 0]) * (area[:, 3] - area[:, 1])) / 96**2
    assert (share_inside(out.maps["joint"], data.object_boxes, image_size=(96, 96)) > area).float().mean() >= 0.75


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")


def test_prepare_module_keeps_outputs_on_cpu() -> None:
    model, _ = load_synthetic_classifier()
    x = torch.rand(2, 3, 96, 96)
    expected = model(x)
    torch.testing.assert_close(prepare_module(model, torch.device("cpu"))(x), expected)
