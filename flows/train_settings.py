"""The settings a person gives a training, declared once (as ``RunSettings`` is for a run).

``TrainSettings`` names, types, bounds and explains every option of ``fidoflow train``: the CLI's
options are projected from it (flows/settings.py's ``add_cli_options``), the
``train-classifier`` flow and its deployment take it as their typed ``settings`` parameter, and
docs/settings.md lists it; one model validates all three.
"""

from __future__ import annotations

from typing import Literal

from fidoflow.pipeline.archive.readers import FORMATS
from fidoflow.pipeline.training.diversify import DiversifyConfig
from fidoflow.pipeline.training.loop import TrainConfig
from fidoflow.pipeline.training.loss import LOSSES
from fidoflow.pipeline.training.network import BACKBONES
from pydantic import Field, field_validator

from .settings import DEVICE, Settings, absolute
from .training_stage import TrainJob

BASE, BLOCK = TrainConfig(), DiversifyConfig()


class TrainSettings(Settings):
    """How to train a class-map classifier: backbone, loss, diversification block, schedule."""

    backbone: Literal[BACKBONES] = Field(  # type: ignore[valid-type]
        BASE.backbone, description="the network whose pooling and classifier become a 1x1 "
                                   "convolution to class maps")
    pretrained: bool = Field(True, description="start efficientnet-lite0 from its ImageNet "
                                               "weights (--no-pretrained: random weights)")
    loss: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        BASE.loss, description="ce, or gce: cross-entropy over the true class and the top-k "
                               "negatives")
    top_k: int | None = Field(None, ge=1, description="negatives in gce (default: 15, or all "
                                                      "when there are fewer)")
    diversify: bool = Field(True, description="the diversification block (--no-diversify: "
                                              "train without it)")
    p_peak: float = Field(BLOCK.p_peak, ge=0, le=1,
                          description="probability of suppressing a class map's peak")
    p_patch: float = Field(BLOCK.p_patch, ge=0, le=1,
                           description="probability of suppressing each patch")
    patch_size: int = Field(BLOCK.patch, ge=1, description="patch side in class-map cells")
    alpha: float = Field(BLOCK.alpha, ge=0, le=1, description="scale of suppressed activations")
    epochs: int = Field(BASE.epochs, ge=1, description="passes over the training images")
    lr: float = Field(BASE.lr, gt=0, description="peak learning rate (AdamW, one cycle)")
    weight_decay: float = Field(BASE.weight_decay, ge=0, description="AdamW weight decay")
    batch_size: int = Field(BASE.batch_size, ge=1, description="images per training step")
    crop_scale: float = Field(BASE.crop_scale, gt=0, le=1,
                              description="random crops keep this fraction of the side or more; "
                                          "1: no crop")
    flip: bool = Field(True, description="random horizontal flips (--no-flip: none)")
    val_fraction: float = Field(BASE.val_fraction, gt=0, lt=1,
                                description="share of the training images held out for "
                                            "validation")
    seed: int = Field(BASE.seed, description="same data and seed give the same model (CPU)")
    device: str = Field("auto", description="auto (a GPU with bf16 autocast when there is "
                                            "one), cpu, cuda, cuda:0")
    workers: int = Field(4, ge=1, description="threads decoding the images")
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="force an archive reader instead of detecting it")
    images_root: str | None = Field(None, description="where a COCO JSON's or manifest's image "
                                                      "paths are relative to")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    def to_job(self, archive: str, out: str) -> TrainJob:
        """The training these settings describe, on ``archive`` into ``out``."""
        block = (DiversifyConfig(self.p_peak, self.p_patch, self.patch_size, self.alpha)
                 if self.diversify else None)
        config = TrainConfig(
            backbone=self.backbone, pretrained=self.pretrained, loss=self.loss,
            top_k=self.top_k, diversify=block, epochs=self.epochs, lr=self.lr,
            weight_decay=self.weight_decay, batch_size=self.batch_size,
            crop_scale=self.crop_scale, flip=self.flip, val_fraction=self.val_fraction,
            seed=self.seed)
        return TrainJob(archive, out, config, device=self.device, format=self.format,
                        images_root=absolute(self.images_root), workers=self.workers)
