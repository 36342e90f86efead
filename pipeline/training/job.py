"""One training as the trainer's callers describe it: the archive, the output folder, the
settings and where to run (``TrainSettings.to_job`` makes it), and the model card it writes."""

from __future__ import annotations

from dataclasses import dataclass

from fidoflow.pipeline.models.class_maps import architecture_name, input_size
from fidoflow.pipeline.training.loop import TrainConfig


@dataclass
class TrainJob:
    """One training: the archive, the output folder, the settings and where to run."""

    archive: str
    out: str
    config: TrainConfig
    device: str = "auto"
    format: str | None = None
    images_root: str | None = None
    decode_threads: int = 4


def model_card(config: TrainConfig, classes: list[str]) -> dict:
    """The card ``fidoflow run --model MODEL_DIR/model.pt`` reads beside the weights."""
    return {"name": f"{config.backbone} class maps ({config.loss}"
                    f"{', diversification block' if config.diversify else ''})",
            "architecture": architecture_name(config.backbone),
            "classes": list(classes),
            "input_size": list(input_size(config.backbone)),
            "resize": "squash",
            "source": "fidoflow train"}
