"""The settings a person gives fidoflow, declared once: ``RunSettings`` (``fidoflow run``, the
explain-archive deployments), ``TrainSettings`` (``fidoflow train``, the train-classifier
deployment) and ``ConceptSettings`` (``fidoflow concepts``, the learn-concepts deployment).

Each is the one place an option is named, typed, bounded and explained: the CLI's options and
docs/settings.md are projected from it (fidoflow/flows/settings.py), a deployment takes it as its
typed ``settings`` parameter (the Prefect UI draws its form from the same fields), and both are
validated by the same model, so ``iterations: 0`` fails alike from a shell and from a schedule.
``RunSettings.to_config`` resolves a run into the ``RunConfig`` that run.json records,
``TrainSettings.to_job`` a training into its ``TrainJob``, ``ConceptSettings.to_job`` a concept
training into its ``ConceptJob``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from fidoflow.pipeline.archive.readers import FORMATS, SPLITS
from fidoflow.pipeline.concepts.bank import MAX_CONCEPTS, check_concepts
from fidoflow.pipeline.concepts.job import ConceptJob
from fidoflow.pipeline.concepts.xnn import XnnConfig
from fidoflow.pipeline.config import RunConfig
from fidoflow.pipeline.imaging.decode import DEFAULT_BOMB_PIXELS, DEFAULT_MAX_PIXELS
from fidoflow.pipeline.imaging.infill import INFILLS
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.registry import kind, kinds_taking
from fidoflow.pipeline.models.class_maps import BACKBONES
from fidoflow.pipeline.training.diversify import DiversifyConfig
from fidoflow.pipeline.training.job import TrainJob
from fidoflow.pipeline.training.loop import TrainConfig
from fidoflow.pipeline.training.loss import LOSSES

FIDO_ONLY = (f"; reaches {', '.join(kinds_taking('iterations'))} only, other methods take "
             "NAME=KIND:key=value")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def known_device(value: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``, or a one-line error."""
    if not DEVICE.match(value):
        raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


Device = Annotated[str, AfterValidator(known_device)]
# options only a run over an archive has (the demo makes its own archive)
ARCHIVE_FIELDS = ("format", "split", "images_root", "label_map", "crop", "detection_threshold",
                  "detection_categories")


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


class Settings(BaseModel):
    """What every settings model shares: no unknown names, immutable, one-line errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Self:
        """Validate ``values``; a bad one raises ``ValueError`` with one line naming each field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError(one_line(exc)) from None


class ClassifierSettings(Settings):
    """The classifier a command reads (``run`` and ``concepts`` alike)."""

    model: str = Field("efficientnet-lite0",
                       description="built-in (efficientnet-lite0, synthetic-cnn), an exported "
                                   "program (.pt2), a TorchScript file, or a state_dict file "
                                   "with a model card")
    model_card: str | None = Field(None, description="model card (YAML/JSON) of a state_dict "
                                                     "model (default: <model>.yaml beside it)")
    trust_model_code: bool = Field(False, description="allow a fully pickled model (unpickling "
                                                      "runs code from the file)")

    def checked_model(self) -> str:
        """The model as the workers load it (a built-in's name, a file's absolute path), after
        one-line errors for a model or model card that is not there."""
        from fidoflow.pipeline.models.loading import BUILTINS

        if self.model_card is not None and not Path(self.model_card).exists():
            raise FileNotFoundError(f"model-card not found: {self.model_card}")
        if self.model in BUILTINS:
            return self.model
        if not Path(self.model).is_file():
            raise ValueError(f"unknown model {self.model!r}: neither a built-in "
                             f"({', '.join(BUILTINS)}) nor a model file")
        return absolute(self.model)


class ClusterSettings(Settings):
    """Where a command's tasks run (flows/cluster.py decides): a local cluster of ``workers``,
    a cluster class scaled to them, or an existing scheduler."""

    workers: int = Field(default_factory=default_workers, ge=1,
                         description="Dask worker processes of a local cluster")
    cluster: str | None = Field(None, description="a Dask cluster class to start instead of a "
                                "local cluster, e.g. dask_jobqueue.SLURMCluster or "
                                "dask_kubernetes.operator.KubeCluster, scaled to --workers")
    cluster_options: str | None = Field(None, description="YAML file of the cluster class's "
                                        "keyword arguments (queue, cores, memory, image, ...)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler "
                                                       "(tcp://host:port) instead of a local cluster")
    api_patience: float = Field(300, gt=0, description="seconds the run's Prefect clients "
                                "retry an API that does not answer (a restarted server, a "
                                "network blip), with growing waits, before the run ends in one "
                                "line")

    def check_cluster(self) -> None:
        """One line for options that cannot go together or a missing options file."""
        if self.cluster is not None and self.dask_address is not None:
            raise ValueError("give --cluster or --dask-address, not both")
        if self.cluster_options is not None:
            if self.cluster is None:
                raise ValueError("--cluster-options needs --cluster")
            if not Path(self.cluster_options).exists():
                raise FileNotFoundError(f"cluster-options not found: {self.cluster_options}")


class RunSettings(ClusterSettings, ClassifierSettings):
    """How to explain an archive: methods, FIDO's budget, sharding, model, device."""

    method: str | list[str] = Field(
        "scd", description="methods: a comma list of kinds (`fidoflow methods` lists them) or "
                           "variants NAME=KIND:key=value:key=value, e.g. "
                           "scd,cd,gradcam,knockoff=scd:infill=knockoff; a list of such strings "
                           "in a deployment, a repeated --method on the CLI")
    target: Literal["predicted", "label"] = Field(
        "predicted", description="the class the maps explain: the top-1 prediction or the "
                                 "manifest's label where it is one of the model's classes")
    samples: int | None = Field(None, ge=1, description="samples B per image and step "
                                f"(default: scd 2, cd 4){FIDO_ONLY}")
    iterations: int | None = Field(None, ge=1, description="optimisation steps (default 30)"
                                                           f"{FIDO_ONLY}")
    mask_size: int | None = Field(None, ge=1, description="side h = w of every stored map "
                                  "(default 28), and of the FIDO kinds' mask (" +
                                  ", ".join(kinds_taking("mask_size")) + ")")
    infill: Literal[tuple(sorted(INFILLS))] | None = Field(  # type: ignore[valid-type]
        None, description=f"what replaces dropped pixels (default blur){FIDO_ONLY}")
    stop_change: float | None = Field(
        None, ge=0, description="stop an image early once its mask cells moved less than this "
                                "on average over 5 steps; 0 or unset never stops early"
                                f"{FIDO_ONLY}")
    concepts: str | None = Field(None, description="the folder `fidoflow concepts` trained "
                                 "for the model: what the concept methods (" +
                                 ", ".join(kinds_taking("concepts")) + ") read")
    shard_size: int | None = Field(None, ge=1, description="images per shard, the unit of "
                                   "resume (default: every worker gets an equal shard in every "
                                   "round, at most 16 on a CPU, 256 on a GPU)")
    task_size: int | None = Field(None, ge=1, description="images per task, rounded up to whole "
                                  "shards (default: about 30 s of work, from the methods' cost "
                                  "and the device; at most 2000 tasks a run)")
    batch_size: int | None = Field(None, ge=1, description="images per optimisation step "
                                   "(default: 1 on a CPU; on a GPU as many as fill 60 % of its "
                                   "free memory, 8 to 1024)")
    device: Device = Field("auto", description="auto (a GPU when there is one), cpu, cuda, cuda:0")
    seed: int = Field(0, description="same inputs and seed give the same masks")
    explain_only: bool = Field(False, description="masks and predictions only: skip "
                                                  "re-classification, metrics and report")
    compile: bool = Field(False, description="torch.compile the classifier (GPU runs)")
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="force an archive reader instead of detecting it")
    split: Literal[SPLITS] = Field("all", description="keep the train or test rows only")  # type: ignore[valid-type]
    images_root: str | None = Field(None, description="where a COCO JSON's or manifest's image "
                                                      "paths are relative to")
    label_map: str | None = Field(None, description="CSV label_name,model_class mapping the "
                                                    "archive's labels to the model's classes")
    crop: Literal["none", "boxes"] = Field(
        "none", description="boxes: explain each image's annotated box (COCO camera traps, "
                            "CUB) as the square crop around it, as species classifiers see it")
    detection_threshold: float = Field(0.2, ge=0, le=1, description="MegaDetector output: the "
                                       "lowest confidence of a detection that is explained")
    detection_categories: str = Field("animal", description="MegaDetector output: the "
                                      "categories explained, names or keys (animal,person)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1,
                            description="decoded images are shrunk under this many pixels")
    max_image_pixels: int = Field(DEFAULT_BOMB_PIXELS, ge=1,
                                  description="images above this many pixels are refused as "
                                              "decompression bombs")

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: str | list[str]) -> str:
        """One comma string whichever way it came (repeated --method, a list in a deployment)."""
        text = value if isinstance(value, str) else ",".join(value)
        parse_methods(text)  # raises on an unknown kind or a malformed variant
        return text

    def to_config(self, archive: str, out: str) -> RunConfig:
        """The resolved run: methods built, local paths made absolute, files checked."""
        model = self.checked_model()
        self.check_cluster()
        for option in ("label_map", "images_root", "concepts"):
            value = getattr(self, option)
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"{option.replace('_', '-')} not found: {value}")
        methods = parse_methods(self.method, {
            "samples": self.samples, "iterations": self.iterations, "mask_size": self.mask_size,
            "infill": self.infill, "stop_change": self.stop_change,
            "concepts": absolute(self.concepts)})
        for name, spec in methods.items():
            if "concepts" in kind(spec.kind).run_options:
                check_concepts(spec.config.concepts, model, absolute(self.model_card), name)
        return RunConfig(
            source=location(archive), root=location(out),
            methods=methods, mask_size=self.mask_size or RunConfig.mask_size,
            target=self.target, model=model, shard_size=self.shard_size,
            task_size=self.task_size,
            batch_size=self.batch_size, seed=self.seed, workers=self.workers,
            device=self.device, compile=self.compile, analyse=not self.explain_only,
            format=self.format, split=self.split, images_root=absolute(self.images_root),
            model_card=absolute(self.model_card), trust_model_code=self.trust_model_code,
            label_map=absolute(self.label_map), crop=self.crop,
            detection_threshold=self.detection_threshold,
            detection_categories=self.detection_categories, max_pixels=self.max_pixels,
            max_image_pixels=self.max_image_pixels,
        )



def one_line(exc: ValidationError) -> str:
    """``iterations: must be >= 1 (got 0); device: ...`` from pydantic's multi-line report."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        # a check of ours names the problem itself; pydantic's own (bounds, types) get the value
        given = "" if error["type"] in ("missing", "value_error") else f" (got {error['input']!r})"
        problems.append(f"{field}: {message}{given}")
    return "invalid settings: " + "; ".join(problems)


def absolute(path: str | None) -> str | None:
    """``path`` resolved (None stays None): a deployment's worker may run elsewhere."""
    return None if path is None else str(Path(path).resolve())


def location(where: str) -> str:
    """A run folder or archive as every process reads it: a URL as given, a local path made
    absolute here (a Dask worker's working directory is not the command's)."""
    return where if "://" in where else str(Path(where).resolve())


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
    device: Device = Field("auto", description="auto (a GPU with bf16 autocast when there is "
                                               "one), cpu, cuda, cuda:0")
    decode_threads: int = Field(4, ge=1, description="threads decoding the images")
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="force an archive reader instead of detecting it")
    images_root: str | None = Field(None, description="where a COCO JSON's or manifest's image "
                                                      "paths are relative to")

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
        return TrainJob(location(archive), location(out), config, device=self.device, format=self.format,
                        images_root=absolute(self.images_root),
                        decode_threads=self.decode_threads)


XNN = XnnConfig()


class ConceptSettings(ClusterSettings, ClassifierSettings):
    """How to learn concepts of a classifier: which model and layer, which classes, the XNN."""

    layer: str | None = Field(None, description="the layer whose features concepts are learned "
                              "on (default: the input of the global pooling, else the last "
                              "spatial feature map)")
    classes: str | None = Field(None, description="comma list of the model's class names to "
                                "learn concepts for (default: every class with a labelled "
                                "image)")
    max_concepts: int = Field(XNN.max_concepts, ge=1, le=MAX_CONCEPTS,
                              description="most concepts per class; k is chosen in 1..this by "
                                          "a BIC-like score of faithfulness against k")
    hidden: int = Field(XNN.hidden, ge=1, description="width of the encoder's and decoder's "
                                                      "hidden layer")
    steps: int = Field(XNN.steps, ge=1, description="Adam steps per XNN (each a random batch of "
                                                    f"{XNN.batch_size} feature vectors)")
    lr: float = Field(XNN.lr, gt=0, description="Adam learning rate")
    weight_decay: float = Field(XNN.weight_decay, ge=0, description="Adam weight decay")
    alpha_rec: float = Field(XNN.alpha_rec, ge=0, description="weight of the pooled xnn's "
                                                              "sparse reconstruction loss")
    alpha_pt: float = Field(XNN.alpha_pt, ge=0, description="weight of the pooled xnn's "
                                                            "pull-away term that keeps "
                                                            "concepts distinct")
    seed: int = Field(XNN.seed, description="same features and seed give the same concepts")
    device: Device = Field("auto", description="auto (a GPU when there is one), cpu, cuda, cuda:0")
    batch_size: int = Field(32, ge=1, description="images per forward pass of the feature "
                                                  "extraction")
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="force an archive reader instead of detecting it")
    split: Literal[SPLITS] = Field("all", description="learn on the train or test rows only")  # type: ignore[valid-type]
    images_root: str | None = Field(None, description="where a COCO JSON's or manifest's image "
                                                      "paths are relative to")

    def to_job(self, archive: str, out: str) -> ConceptJob:
        """The concept training these settings describe, on ``archive`` into ``out``."""
        model = self.checked_model()
        config = XnnConfig(max_concepts=self.max_concepts, hidden=self.hidden,
                           steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
                           alpha_rec=self.alpha_rec, alpha_pt=self.alpha_pt, seed=self.seed)
        self.check_cluster()
        classes = tuple(c.strip() for c in (self.classes or "").split(",") if c.strip())
        return ConceptJob(location(archive), location(out), model, config, absolute(self.model_card),
                          self.trust_model_code, self.layer, classes, self.device, self.format,
                          self.split, absolute(self.images_root), self.batch_size)
