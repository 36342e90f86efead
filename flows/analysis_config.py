"""The analysis stages' settings, one JSON-able object: tasks on Dask workers get it as JSON,
so every shard of a run re-classifies, evaluates and aggregates with the same values."""

from __future__ import annotations

from dataclasses import dataclass, field

from fidoflow.pipeline.analysis.aggregate import BootstrapConfig
from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
from fidoflow.pipeline.analysis.reclassify import ReclassifyConfig


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of the analysis stages (defaults documented in docs/tables.md and the
    pipeline modules); ``gallery`` images in the report, ``flips`` examples per (method,
    variant, direction)."""

    reclassify: ReclassifyConfig = field(default_factory=ReclassifyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    gallery: int = 8
    flips: int = 6

    def to_json(self) -> dict[str, object]:
        return {"reclassify": self.reclassify.as_dict(), "evaluate": self.evaluate.as_dict(),
                "bootstrap": dict(vars(self.bootstrap)), "gallery": self.gallery,
                "flips": self.flips}

    @classmethod
    def from_json(cls, record: dict | None) -> AnalysisConfig:
        if not record:
            return cls()
        return cls(ReclassifyConfig.from_dict(record.get("reclassify", {})),
                   EvaluateConfig(**record.get("evaluate", {})),
                   BootstrapConfig(**record.get("bootstrap", {})),
                   record.get("gallery", 8), record.get("flips", 6))


DEFAULT_ANALYSIS = AnalysisConfig()  # what a run uses unless told otherwise
