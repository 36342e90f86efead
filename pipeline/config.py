"""A run's resolved settings, JSON-able: what run.json records and what every shard task reads
back (``RunConfig``), and the analysis stages' settings (``AnalysisConfig``), so that every shard of a
run re-classifies, evaluates and aggregates with the same values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from fidoflow.pipeline.analysis.aggregate import BootstrapConfig
from fidoflow.pipeline.analysis.evaluate import EvaluateConfig
from fidoflow.pipeline.analysis.reclassify import ReclassifyConfig
from fidoflow.pipeline.imaging.decode import DEFAULT_BOMB_PIXELS, DEFAULT_MAX_PIXELS, DecodeLimits
from fidoflow.pipeline.methods import MethodSpec, parse_methods


@dataclass
class RunConfig:
    """Everything that decides a run's results (``root``, ``workers``, ``device`` and
    ``trust_model_code`` only decide where, how fast and what may be loaded; ``increment``
    which run of the folder writes the rows).

    ``source`` is a folder or a manifest/COCO file; ``format`` forces a reader (None: detect);
    ``images_root`` is where a file source's image paths are relative to (None: its folder).
    """

    source: str
    root: str
    methods: dict[str, MethodSpec] = field(default_factory=lambda: parse_methods("scd"))
    mask_size: int = 28  # every method's maps are stored at mask_size × mask_size
    target: str = "predicted"  # or "label": explain the manifest's label where there is one
    model: str = "efficientnet-lite0"
    shard_size: int | None = None  # None: chosen from the image count and the workers
    task_size: int | None = None  # images per task (whole shards); None: sized by the work
    batch_size: int | None = None  # None: pipeline/stages/worker.images_per_step (device and memory)
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    compile: bool = False
    analyse: bool = True
    format: str | None = None
    split: str = "all"
    images_root: str | None = None
    model_card: str | None = None
    trust_model_code: bool = False
    label_map: str | None = None
    crop: str = "none"  # or "boxes": explain each row's annotated box as a square crop
    detection_threshold: float = 0.2  # MegaDetector output: the lowest confidence explained
    detection_categories: str = "animal"  # and the categories (names or keys, comma list)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_pixels: int = DEFAULT_BOMB_PIXELS
    increment: int | None = None  # which run of the folder this is (prepare_run numbers it)

    @property
    def archive_root(self) -> Path:
        """The folder the manifest's ``path`` column is relative to."""
        from fidoflow.pipeline.archive.readers import archive_root
        return archive_root(self.source, self.images_root)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_pixels, self.max_image_pixels)

    def results_identity(self) -> dict[str, object]:
        """The part of the config that must match for a rerun to resume into the same folder."""
        record = self.to_json()
        for key in ("root", "workers", "device", "compile", "analyse", "trust_model_code",
                    "increment"):
            record.pop(key)
        return record

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        record["methods"] = {name: spec.to_json() for name, spec in self.methods.items()}
        return record

    @classmethod
    def from_json(cls, record: dict) -> RunConfig:
        record = dict(record)
        record["methods"] = {name: MethodSpec.from_json(spec)
                             for name, spec in record["methods"].items()}
        return cls(**record)


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
