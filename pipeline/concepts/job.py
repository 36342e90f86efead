"""``fidoflow concepts`` as plain steps (no Prefect inside; flows/concepts.py wires them):

1. ``extract_features``: one pass of the frozen classifier over the archive's images, in
   batches: pooled features, logits, labels, and the spatial activations of the first
   ``NMF_IMAGES`` images of each class (by label, else by prediction: the NMF baseline's data)
   into ``features.pt``;
2. ``train_class``: one class's XNN (k chosen by the BIC-like score) and NMF bank into its own
   file; a class already trained with the same settings is kept (resume);
3. ``write_card``: ``concepts.json``, what ``--method xnn,nmf --concepts DIR`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from fidoflow.pipeline.archive.readers import archive_root, read_archive
from fidoflow.pipeline.concepts.features import extract, feature_layer
from fidoflow.pipeline.concepts.nmf import fit_nmf
from fidoflow.pipeline.concepts.xnn import XnnConfig, choose_xnn
from fidoflow.pipeline.imaging.decode import DecodeLimits
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.loading import LoadedModel, load_model
from fidoflow.pipeline.provenance import code_version
from fidoflow.pipeline.training.data import decode_rows, in_validation
from fidoflow.storage.conceptfolder import CARD, FEATURES, ConceptFolder, class_file

NMF_IMAGES = 64  # images per class whose spatial activations the NMF bank is fitted on
VAL_FRACTION = 0.2  # features held out (by image id) to score each k and report R²
UNLABELLED = -1


@dataclass
class ConceptJob:
    """One concept training: the archive, the output folder, the model, the settings."""

    archive: str
    out: str
    model: str
    config: XnnConfig = field(default_factory=XnnConfig)
    model_card: str | None = None
    trust_model_code: bool = False
    layer: str | None = None
    classes: tuple[str, ...] = ()
    device: str = "cpu"
    format: str | None = None
    split: str = "all"
    images_root: str | None = None
    batch_size: int = 32
    workers: int = 4

    def load(self) -> LoadedModel:
        return load_model(self.model, self.model_card, self.trust_model_code)


def _key(job: ConceptJob, model: LoadedModel) -> dict:
    """What decides the features: a rerun with another model, layer or data extracts again."""
    return {"model": model.identity, "layer": job.layer, "archive": job.archive,
            "split": job.split, "format": job.format, "images_root": job.images_root}


def extract_features(job: ConceptJob) -> dict:
    """Features of every decodable image (kept when ``features.pt`` holds the same key)."""
    folder = ConceptFolder(job.out)
    model = job.load()
    key = _key(job, model)
    if folder.exists(FEATURES):
        saved = folder.read(FEATURES)
        if saved["key"] == key:
            return summary_of(saved)
    frame = read_archive(job.archive, job.format, job.split, job.images_root)
    usable = frame[frame["manifest_error"].isna()]
    data, skipped = decode_rows(usable, archive_root(job.archive, job.images_root),
                                model.class_names, model.input_size, model.resize,
                                DecodeLimits(), job.workers, unknown=UNLABELLED)
    if len(data) == 0:
        raise ValueError(f"no image of {job.archive} could be decoded")
    device = resolve_device(job.device)
    module = model.on(device)
    layer = feature_layer(module, data.images[:2].to(device).float() / 255, job.layer)
    pooled, logits, sample, spatial = [], [], [], []
    kept: dict[int, int] = {}
    for i in range(0, len(data), job.batch_size):
        images = data.images[i:i + job.batch_size].to(device).float() / 255
        p, s, out = extract(module, layer, images, job.batch_size)
        pooled.append(p)
        logits.append(out)
        labels = data.labels[i:i + job.batch_size]
        for j, c in enumerate(row_classes(labels, out).tolist()):
            if kept.get(c, 0) < NMF_IMAGES:  # the NMF data: the first images of each class
                kept[c] = kept.get(c, 0) + 1
                sample.append(c)
                spatial.append(s[j].half())
    features = {"key": key, "layer": {"name": layer.name, "side": layer.side},
                "class_names": model.class_names, "ids": list(data.ids),
                "labels": data.labels, "pooled": torch.cat(pooled), "logits": torch.cat(logits),
                "sample_class": torch.tensor(sample, dtype=torch.long),
                "spatial": torch.stack(spatial), "skipped": skipped}
    folder.write(FEATURES, features)
    return summary_of(features)


def summary_of(features: dict) -> dict:
    return {"images": len(features["ids"]), "skipped": features["skipped"],
            "layer": features["layer"], "channels": int(features["pooled"].shape[1])}


def classes_to_train(job: ConceptJob) -> list[int]:
    """The asked classes (by name), else every class with a labelled image, else every class
    some image is predicted as."""
    features = ConceptFolder(job.out).read(FEATURES)
    names = features["class_names"]
    if job.classes:
        unknown = sorted(set(job.classes) - set(names))
        if unknown:
            raise ValueError(f"the model has no class {', '.join(unknown)}")
        return [names.index(c) for c in job.classes]
    labels = features["labels"]
    present = labels[labels >= 0]
    if len(present) == 0:
        present = features["logits"].argmax(dim=1)
    return sorted(set(present.tolist()))


def row_classes(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Each image's class for the concepts: its label, else its top-1 prediction."""
    return torch.where(labels >= 0, labels, logits.argmax(dim=1))


def members(features: dict, index: int) -> torch.Tensor:
    """Rows of class ``index`` (``row_classes``)."""
    return row_classes(features["labels"], features["logits"]) == index


def train_class(job: ConceptJob, index: int) -> dict:
    """Class ``index``'s XNN and NMF bank into ``class-XXXXX.pt``; returns its card entry."""
    folder = ConceptFolder(job.out)
    name = class_file(index)
    if folder.exists(name):
        saved = folder.read(name)
        if saved["config"] == job.config.as_dict():
            return entry_of(saved)
    features = folder.read(FEATURES)
    pooled, logit = features["pooled"], features["logits"][:, index]
    held = torch.tensor([in_validation(i, VAL_FRACTION) for i in features["ids"]])
    if held.all() or not held.any():
        raise ValueError(f"{len(held)} images are too few to hold {VAL_FRACTION:.0%} out")
    fitted, scores = choose_xnn(pooled, logit, held, job.config)
    own = members(features, index)
    with torch.no_grad():
        share = fitted.net.contributions(fitted.net.encode(pooled[own])).mean(dim=0)
    in_class = features["sample_class"] == index
    spatial = features["spatial"][in_class].float()
    rows = spatial.permute(0, 2, 3, 1).reshape(-1, spatial.shape[1])
    bank = fit_nmf(rows, fitted.net.concepts, seed=job.config.seed + index)
    record = {"class": features["class_names"][index], "index": index,
              "config": job.config.as_dict(), "channels": int(pooled.shape[1]),
              "concepts": fitted.net.concepts, "hidden": job.config.hidden,
              "xnn": fitted.net.state_dict(), "scores": scores, "val_r2": fitted.val_r2,
              "mean_contribution": share.tolist(), "images": int(own.sum()),
              "nmf": bank, "nmf_images": int(in_class.sum())}
    folder.write(name, record)
    return entry_of(record)


def entry_of(record: dict) -> dict:
    return {"class": record["class"], "file": class_file(record["index"]),
            "concepts": record["concepts"], "val_r2": record["val_r2"],
            "mean_contribution": record["mean_contribution"], "images": record["images"],
            "scores": record["scores"], "nmf_images": record["nmf_images"]}


def write_card(job: ConceptJob, entries: dict[int, dict], extracted: dict) -> dict:
    """``concepts.json``, written last (what the concept methods read)."""
    card = {"model": job.model, "model_card": job.model_card, "layer": extracted["layer"],
            "channels": extracted["channels"], "images": extracted["images"],
            "skipped": extracted["skipped"], "archive": job.archive, "split": job.split,
            "config": job.config.as_dict(),
            "classes": {str(i): entries[i] for i in sorted(entries)},
            "code_version": code_version(),
            "finished": datetime.now(UTC).isoformat(timespec="microseconds")}
    ConceptFolder(job.out).write_card(card)
    return card


def learn_concepts(job: ConceptJob) -> dict:
    """The three steps in one process (the flow runs them as tasks)."""
    extracted = extract_features(job)
    entries = {i: train_class(job, i) for i in classes_to_train(job)}
    return write_card(job, entries, extracted)


__all__ = ["CARD", "ConceptJob", "learn_concepts"]
