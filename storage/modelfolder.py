"""The output folder of ``fidoflow train``: the best weights and their model card (what
``fidoflow run --model DIR/model.pt`` loads), the last checkpoint, metrics per epoch, a summary.

    <dir>/model.pt          best state_dict (by validation accuracy)
    <dir>/model.yaml        its model card (architecture, classes, input size)
    <dir>/checkpoint.pt     last epoch: weights, optimiser, scheduler, random states, history
    <dir>/metrics.parquet   one row per epoch (METRICS)
    <dir>/training.json     settings, data counts, best epoch, test accuracy

Every file is written under a temporary name and renamed (RunFolder.write_bytes_atomic): a
training killed at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
import yaml

from .runfolder import RunFolder

WEIGHTS = "model.pt"
CARD = "model.yaml"
CHECKPOINT = "checkpoint.pt"
METRICS_FILE = "metrics.parquet"
SUMMARY = "training.json"
METRICS = pa.schema([
    ("epoch", pa.int32()),
    ("train_loss", pa.float64()),
    ("train_accuracy", pa.float64()),
    ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()),
    ("lr", pa.float64()),
    ("best", pa.bool_()),
    ("seconds", pa.float64()),
])


@dataclass
class ModelFolder:
    root: str

    def __post_init__(self) -> None:
        self.folder = RunFolder(self.root)

    def path(self, name: str) -> str:
        return self.folder.url(name)

    def read_checkpoint(self) -> dict | None:
        """The last checkpoint, or None when there is none yet."""
        if not self.folder.exists(CHECKPOINT):
            return None
        return self.folder.read_torch(CHECKPOINT)

    def write_checkpoint(self, checkpoint: dict) -> None:
        self.folder.write_torch(checkpoint, CHECKPOINT)

    def write_model(self, state: dict[str, torch.Tensor], card: dict) -> None:
        """Weights first, card second: a card always describes weights that exist."""
        self.folder.write_torch(state, WEIGHTS)
        self.folder.write_bytes_atomic(yaml.safe_dump(card, sort_keys=False).encode(), CARD)

    def write_metrics(self, history: list[dict]) -> None:
        self.folder.write_table(pa.Table.from_pylist(history, METRICS), METRICS_FILE)

    def write_summary(self, summary: dict) -> None:
        self.folder.write_json(summary, SUMMARY)
