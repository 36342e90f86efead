"""What a metric is (Quantus' pattern): one class per metric, carrying the columns it writes
(each with its type, score direction and title), what it needs (a classifier, boxes, parts) and
a batched evaluation. The evaluate stage, the ``metrics/`` table's schema, the summary and the
report loop over the registry; a new metric is one declared class (and its test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

if TYPE_CHECKING:
    from fidoflow.pipeline.analysis.evaluate import EvaluateConfig

Need = Literal["boxes", "parts"]


@dataclass(frozen=True)
class Column:
    """One value a metric writes per image: its ``metrics/`` column, Arrow type, score
    direction (``higher``/``lower`` is better, None: descriptive), report title, and whether
    the summary averages it (curves are not)."""

    name: str
    type: pa.DataType
    better: Literal["higher", "lower"] | None
    title: str
    description: str
    summarised: bool = True

    def value(self, values: object) -> object:
        """The table value of one image's entry: None for NaN or None (no box, no part), lists
        as lists, text as text."""
        if pa.types.is_list(self.type):
            return np.asarray(values).tolist()
        if pa.types.is_string(self.type):
            return None if values is None else str(values)
        if np.isnan(values):
            return None
        return bool(values) if pa.types.is_boolean(self.type) else float(values)

    def empty(self, n: int) -> np.ndarray:
        """Values for ``n`` images that lack what the metric needs."""
        if pa.types.is_string(self.type):
            return np.full(n, None, dtype=object)
        return np.full(n, np.nan, dtype=np.float32)


Part = dict  # {"name": str, "x": float, "y": float}: a visible part's centre, input pixels


@dataclass
class MetricBatch:
    """N images as the model saw them (N, 3, H, W), their maps (N, h, w; NaN read as 0), the
    classes the maps explain (N,), and the ground truth in model-input pixels: boxes (N, 4)
    with NaN rows where an image has none, and each image's visible parts (empty when none)."""

    model: nn.Module
    images: torch.Tensor
    saliency: torch.Tensor
    targets: torch.Tensor
    boxes: np.ndarray
    parts: list[list[Part]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parts:
            self.parts = [[] for _ in range(len(self.images))]

    @property
    def size(self) -> tuple[int, int]:
        """The model input's (H, W): where maps are compared with pixels."""
        return tuple(self.images.shape[-2:])

    def pixels(self, at_reference: float, config: EvaluateConfig) -> float:
        """A pixel length given at ``config.reference_size`` (224), at this input's size."""
        return at_reference * (min(self.size) / config.reference_size)

    def truth(self) -> torch.Tensor:
        """The ground-truth boxes (N, 4) as a float tensor."""
        return torch.from_numpy(self.boxes).float()

    def rows_with(self, needs: frozenset[Need]) -> np.ndarray:
        """Indices of the images that have what a metric needs."""
        has = np.ones(len(self.images), bool)
        if "boxes" in needs:
            has &= ~np.isnan(self.boxes).any(axis=1)
        if "parts" in needs:
            has &= np.array([bool(p) for p in self.parts], dtype=bool)
        return np.nonzero(has)[0]


@dataclass
class Measured:
    """A metric's values per column (N,) and, for a metric with a table of its own, that
    table's rows (each naming its image by position in the batch, ``image``)."""

    values: dict[str, np.ndarray]
    rows: list[dict] = field(default_factory=list)


class Metric:
    """Base of every metric: ``measure`` (the one step a metric writes) gets the images that
    have what it ``needs`` and returns each column's values for them (and, with a ``table``,
    rows of it); the base fills NaN for the others."""

    columns: ClassVar[tuple[Column, ...]]
    needs: ClassVar[frozenset[Need]] = frozenset()
    position: ClassVar[int]  # column order in the table
    table: ClassVar[str | None] = None  # the run-folder table its rows go to, if any

    def evaluate(self, batch: MetricBatch, config: EvaluateConfig) -> Measured:
        n = len(batch.images)
        rows = batch.rows_with(self.needs)
        out = {c.name: c.empty(n) for c in self.columns if not pa.types.is_list(c.type)}
        if not len(rows):
            return Measured(out)
        whole = len(rows) == n and not self.needs
        measured = self.measure(batch if whole else _subset(batch, rows), config)
        if not isinstance(measured, Measured):
            measured = Measured(measured)
        for column in self.columns:
            values = measured.values[column.name]
            if pa.types.is_list(column.type):
                out[column.name] = values
            else:
                out[column.name][rows] = values
        details = [{**row, "image": int(rows[row["image"]])} for row in measured.rows]
        return Measured(out, details)

    def measure(self, batch: MetricBatch, config: EvaluateConfig
                ) -> dict[str, np.ndarray] | Measured:
        raise NotImplementedError


def _subset(batch: MetricBatch, rows: np.ndarray) -> MetricBatch:
    index = torch.from_numpy(rows)
    return MetricBatch(batch.model, batch.images[index.to(batch.images.device)],
                       batch.saliency.cpu()[index], batch.targets[index], batch.boxes[rows],
                       [batch.parts[i] for i in rows])


METRICS: list[Metric] = []


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: evaluate ``cls`` in every run (columns ordered by ``position``)."""
    names = {c.name for m in METRICS for c in m.columns}
    clash = names & {c.name for c in cls.columns}
    if clash:
        raise ValueError(f"metric column(s) {sorted(clash)} declared twice")
    METRICS.append(cls())
    METRICS.sort(key=lambda m: m.position)
    return cls


def columns(select: Callable[[Column], bool] = lambda c: True) -> list[Column]:
    """Every registered metric's columns, in table order."""
    return [c for m in METRICS for c in m.columns if select(c)]


def fields() -> list[pa.Field]:
    """The ``metrics/`` table's value columns as Arrow fields."""
    return [pa.field(c.name, c.type) for c in columns()]
