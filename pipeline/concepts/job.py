"""``fidoflow concepts`` as plain steps (no Prefect inside; flows/concepts.py wires them onto
the cluster):

1. ``extraction_parts``: the archive's usable rows in parts of ``PART_IMAGES`` (none when
   ``features.pt`` holds features of this model, layer and data already);
2. ``extract_part`` (one task per part, on any worker): the frozen classifier over the part's
   images in batches: pooled features, logits, labels, and the spatial activations of the
   part's first ``NMF_IMAGES`` images of each class (by label, else by prediction), into
   ``parts/``; a part already extracted with the same key is kept (resume);
3. ``merge_features``: the parts in archive order into ``features.pt`` (ids, labels, logits),
   the pooled features into ``training/`` (each class's own images, and a background of at
   most ``BACKGROUND_IMAGES`` spread over the archive), each class's first ``NMF_IMAGES``
   spatial activations into ``samples/``, and ``SPATIAL_IMAGES`` of those, every class in
   turn, as the spatial background; the parts are removed with their folder;
4. ``train_class`` (one task per class): its pooled XNN fitted on its own images and the
   background, its spatial XNN on its own maps and the spatial background (k of each chosen by
   a BIC-like score), and its NMF bank, into its own file; a class already
   trained with the same settings is kept (resume). A task reads its class's files only, so
   its memory is bounded by the class, not the archive (CUB: 200 classes);
5. ``write_card``: ``concepts.json``, what ``--method xnn-spatial,xnn,nmf --concepts DIR``
   reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import torch

from fidoflow.pipeline.archive.readers import archive_root, read_archive
from fidoflow.pipeline.concepts.features import FeatureLayer, extract, feature_layer
from fidoflow.pipeline.concepts.nmf import fit_nmf
from fidoflow.pipeline.concepts.spatial_xnn import (
    SpatialData,
    choose_spatial_xnn,
    drop_silent_maps,
    held_out_maps,
    ridge,
)
from fidoflow.pipeline.concepts.xnn import XnnConfig, choose_xnn, drop_silent, held_out
from fidoflow.pipeline.imaging.decode import DecodeLimits
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.models.loading import LoadedModel
from fidoflow.pipeline.provenance import code_version
from fidoflow.pipeline.stages.worker import worker_model
from fidoflow.pipeline.training.data import decode_rows, in_validation
from fidoflow.storage.conceptfolder import (
    CARD,
    FEATURES,
    PARTS,
    SPATIAL_BACKGROUND,
    TRAINING_BACKGROUND,
    ConceptFolder,
    class_file,
    part_file,
    sample_file,
    training_file,
)

BACKGROUND_IMAGES = 2048  # images of every class each XNN also fits: its logit beyond its class
NMF_IMAGES = 64  # images per class whose spatial activations the NMF bank is fitted on
SPATIAL_IMAGES = 256  # the spatial XNN's background: feature maps of every class, in turn
PART_IMAGES = 256  # images one extraction task decodes and runs: the extraction's unit of resume
DECODE_THREADS = 4  # threads decoding a part's images (PIL releases the GIL)
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

    def load(self) -> LoadedModel:
        """The model, loaded once per process (a worker's parts and classes share it)."""
        return worker_model(self.model, self.model_card, self.trust_model_code)


def warm_worker(job: ConceptJob) -> None:
    """On a worker: load the model with its layers now, so that its first part starts at once
    (each worker keeps it for the job)."""
    job.load().on(resolve_device(job.device), layers=True)


def _key(job: ConceptJob, model: LoadedModel) -> dict:
    """What decides the features: a rerun with another model, layer or data extracts again."""
    return {"model": model.identity, "layer": job.layer, "archive": job.archive,
            "split": job.split, "format": job.format, "images_root": job.images_root}


def extracted(job: ConceptJob) -> dict | None:
    """The summary of ``features.pt`` when it holds this job's features, else None."""
    folder = ConceptFolder(job.out)
    if not folder.exists(FEATURES):
        return None
    saved = folder.read(FEATURES)
    current = (saved["key"] == _key(job, job.load()) and folder.exists(TRAINING_BACKGROUND)
               and folder.exists(SPATIAL_BACKGROUND))
    return summary_of(saved) if current else None


def extraction_parts(job: ConceptJob) -> list[pd.DataFrame]:
    """The archive's usable rows in parts of ``PART_IMAGES`` (each keeps its row numbers);
    none when ``features.pt`` is this job's already."""
    if extracted(job) is not None:
        return []
    frame = read_archive(job.archive, job.format, job.split, job.images_root)
    usable = frame[frame["manifest_error"].isna()].reset_index(drop=True)
    if len(usable) == 0:
        raise ValueError(f"{job.archive} lists no usable image")
    return [usable.iloc[i:i + PART_IMAGES] for i in range(0, len(usable), PART_IMAGES)]


def probe_layer(job: ConceptJob, module: torch.nn.Module, model: LoadedModel,
                device: torch.device) -> FeatureLayer:
    """The feature layer, found on a fixed probe batch: every part finds the same one."""
    probe = torch.rand(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    return feature_layer(module, probe.to(device), job.layer)


def extract_part(job: ConceptJob, rows: pd.DataFrame) -> dict:
    """Features of the part's decodable images into ``parts/`` (kept when already there with
    the same key); returns how many images it held and skipped."""
    folder = ConceptFolder(job.out)
    name = part_file(int(rows.index[0]))
    model = job.load()
    key = {**_key(job, model), "rows": [int(rows.index[0]), len(rows)]}
    if folder.exists(name):
        saved = folder.read(name)
        if saved["key"] == key:
            return {"images": len(saved["ids"]), "skipped": saved["skipped"]}
    data, skipped = decode_rows(rows, archive_root(job.archive, job.images_root),
                                model.class_names, model.input_size, model.resize,
                                DecodeLimits(), DECODE_THREADS, unknown=UNLABELLED)
    device = resolve_device(job.device)
    module = model.on(device, layers=True)
    layer = probe_layer(job, module, model, device)
    pooled, logits, sample, spatial, sample_rows = [], [], [], [], []
    kept: dict[int, int] = {}
    for i in range(0, len(data), job.batch_size):
        images = data.images[i:i + job.batch_size].to(device).float() / 255
        p, s, out = extract(module, layer, images, job.batch_size)
        pooled.append(p)
        logits.append(out)
        for j, c in enumerate(row_classes(data.labels[i:i + job.batch_size], out).tolist()):
            if kept.get(c, 0) < NMF_IMAGES:  # the maps kept: the first images of each class
                kept[c] = kept.get(c, 0) + 1
                sample.append(c)
                spatial.append(s[j].half())
                sample_rows.append(i + j)
    folder.write(name, {"key": key, "layer": {"name": layer.name, "side": layer.side},
                        "class_names": model.class_names, "ids": list(data.ids),
                        "labels": data.labels,
                        "pooled": torch.cat(pooled) if pooled else None,
                        "logits": torch.cat(logits) if logits else None,
                        "sample_class": torch.tensor(sample, dtype=torch.long),
                        "sample_rows": torch.tensor(sample_rows, dtype=torch.long),
                        "spatial": torch.stack(spatial) if spatial else None,
                        "skipped": skipped})
    return {"images": len(data), "skipped": skipped}


def merge_features(job: ConceptJob, firsts: list[int]) -> dict:
    """The parts starting at rows ``firsts`` into ``features.pt`` and ``samples/`` (written
    first: ``features.pt`` is what says the extraction is done); the parts are removed."""
    folder = ConceptFolder(job.out)
    parts = [folder.read(part_file(first)) for first in sorted(firsts)]
    layers = {(p["layer"]["name"], p["layer"]["side"]) for p in parts}
    if len(layers) != 1:
        raise RuntimeError(f"the feature parts disagree on the layer: {sorted(layers)}")
    full = [p for p in parts if p["pooled"] is not None]
    if not full:
        raise ValueError(f"no image of {job.archive} could be decoded")
    samples: dict[int, list[tuple[torch.Tensor, torch.Tensor, str]]] = {}
    for part in full:
        for c, activation, row in zip(part["sample_class"].tolist(), part["spatial"],
                                      part["sample_rows"].tolist(), strict=True):
            if len(samples.setdefault(c, [])) < NMF_IMAGES:
                samples[c].append((activation, part["logits"][row], part["ids"][row]))
    for c, kept in samples.items():
        folder.write(sample_file(c), maps_of(kept))
    folder.write(SPATIAL_BACKGROUND, maps_of(in_turn(list(samples.values()), SPATIAL_IMAGES)))
    key = {k: v for k, v in parts[0]["key"].items() if k != "rows"}
    pooled = torch.cat([p["pooled"] for p in full])
    features = {"key": key, "layer": parts[0]["layer"], "class_names": parts[0]["class_names"],
                "ids": [i for p in full for i in p["ids"]],
                "labels": torch.cat([p["labels"] for p in full]),
                "logits": torch.cat([p["logits"] for p in full]),
                "channels": int(pooled.shape[1]),
                "skipped": sum(p["skipped"] for p in parts)}
    write_training(folder, features, pooled)
    folder.write(FEATURES, features)
    folder.remove(PARTS)
    return summary_of(features)


def maps_of(kept: list[tuple[torch.Tensor, torch.Tensor, str]]) -> dict:
    """A sample file's content: feature maps, every class's logits, ids."""
    return {"spatial": torch.stack([m for m, _, _ in kept]),
            "logits": torch.stack([lg for _, lg, _ in kept]), "ids": [i for _, _, i in kept]}


def in_turn(groups: list[list], most: int) -> list:
    """At most ``most`` items, the first of every group, then the second, ...: each class has
    its say in a bounded background."""
    taken: list = []
    for depth in range(max(map(len, groups), default=0)):
        taken += [g[depth] for g in groups if depth < len(g)]
    return taken[:most]


def spread(n: int, most: int) -> torch.Tensor:
    """At most ``most`` of ``n`` rows, evenly spread (all of them where ``n`` ≤ ``most``)."""
    return torch.linspace(0, n - 1, min(n, most)).round().long().unique()


def write_training(folder: ConceptFolder, features: dict, pooled: torch.Tensor) -> None:
    """The class tasks' data: the background's rows and each class's own (``row_classes``),
    with their pooled features, ids and logits (the background's of every class, a class's
    own of its class only)."""
    ids, logits = features["ids"], features["logits"]

    def rows_of(rows: torch.Tensor) -> dict:
        return {"rows": rows, "ids": [ids[i] for i in rows.tolist()], "pooled": pooled[rows]}

    background = spread(len(ids), BACKGROUND_IMAGES)
    folder.write(TRAINING_BACKGROUND, {**rows_of(background), "logits": logits[background],
                                       "class_names": features["class_names"]})
    classes = row_classes(features["labels"], logits)
    for c in classes.unique().tolist():
        rows = (classes == c).nonzero().flatten()
        folder.write(training_file(c), {**rows_of(rows), "logit": logits[rows, c]})


@dataclass(frozen=True)
class TrainingSet:
    """One class's XNN data in archive order: the background and the class's own images
    (``own`` marks these), each row once; ``name``: the class's."""

    pooled: torch.Tensor
    logit: torch.Tensor
    ids: list[str]
    own: torch.Tensor
    name: str


def training_set(folder: ConceptFolder, index: int) -> TrainingSet:
    """Class ``index``'s ``TrainingSet``, from its two files (``write_training`` writes one for
    every class an image belongs to, and only those are trained)."""
    background, mine = folder.read(TRAINING_BACKGROUND), folder.read(training_file(index))
    rows = torch.cat([background["rows"], mine["rows"]])
    order = torch.argsort(rows, stable=True)
    first = torch.ones(len(rows), dtype=torch.bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    pick = order[first]
    ids = background["ids"] + mine["ids"]
    return TrainingSet(torch.cat([background["pooled"], mine["pooled"]])[pick],
                       torch.cat([background["logits"][:, index], mine["logit"]])[pick],
                       [ids[i] for i in pick.tolist()], torch.isin(rows[pick], mine["rows"]),
                       background["class_names"][index])


def spatial_set(folder: ConceptFolder, index: int, evidence: torch.Tensor) -> SpatialData:
    """Class ``index``'s spatial XNN data: its own kept maps and the spatial background's of
    other images, each once, held out by image id as the pooled XNN's are."""
    mine, background = folder.read(sample_file(index)), folder.read(SPATIAL_BACKGROUND)
    known = set(mine["ids"])
    other = [j for j, i in enumerate(background["ids"]) if i not in known]
    ids = mine["ids"] + [background["ids"][j] for j in other]
    spatial = torch.cat([mine["spatial"], background["spatial"][other]]).float()
    logit = torch.cat([mine["logits"][:, index], background["logits"][other, index]]).float()
    own = torch.arange(len(ids)) < len(mine["ids"])
    held = torch.tensor([in_validation(i, VAL_FRACTION) for i in ids])
    return SpatialData(spatial, logit, own, held, evidence)


def finished_card(job: ConceptJob) -> dict | None:
    """The card, when the folder holds everything this job would make: its features, and every
    class it would train, trained with its settings (a rerun then starts no cluster)."""
    folder = ConceptFolder(job.out)
    if not folder.exists(CARD) or extracted(job) is None:
        return None
    card = folder.read_card()
    classes = {str(i) for i in classes_to_train(job)}
    if card["config"] != job.config.as_dict() or set(card["classes"]) != classes:
        return None
    return card


def summary_of(features: dict) -> dict:
    return {"images": len(features["ids"]), "skipped": features["skipped"],
            "layer": features["layer"], "channels": features["channels"],
            "model_sha256": features["key"]["model"]}


def classes_to_train(job: ConceptJob) -> list[int]:
    """The asked classes (by name), else every class with a labelled image, else every class
    some image is predicted as."""
    features = ConceptFolder(job.out).read(FEATURES)
    names = features["class_names"]
    if job.classes:
        unknown = sorted(set(job.classes) - set(names))
        if unknown:
            raise ValueError(f"the model has no class {', '.join(unknown)}")
        asked = [names.index(c) for c in job.classes]
        present = set(row_classes(features["labels"], features["logits"]).tolist())
        empty = [names[i] for i in asked if i not in present]
        if empty:
            raise ValueError(f"{job.archive} has no image of class {', '.join(empty)} (by "
                             "label, else by prediction): its concepts cannot be learned")
        return asked
    labels = features["labels"]
    present = labels[labels >= 0]
    if len(present) == 0:
        present = features["logits"].argmax(dim=1)
    return sorted(set(present.tolist()))


def row_classes(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Each image's class for the concepts: its label, else its top-1 prediction."""
    return torch.where(labels >= 0, labels, logits.argmax(dim=1))


def train_class(job: ConceptJob, index: int) -> dict:
    """Class ``index``'s XNN and NMF bank into ``class-XXXXX.pt``; returns its card entry."""
    folder = ConceptFolder(job.out)
    name = class_file(index)
    if folder.exists(name):
        saved = folder.read(name)
        if saved["config"] == job.config.as_dict() and "spatial" in saved:
            return entry_of(saved)  # (a file of before the spatial XNN is trained again)
    data = training_set(folder, index)
    pooled, logit, own = data.pooled, data.logit, data.own
    held = torch.tensor([in_validation(i, VAL_FRACTION) for i in data.ids])
    if held.all() or not held.any():
        raise ValueError(f"{len(held)} images are too few to hold {VAL_FRACTION:.0%} out")
    fitted, scores = choose_xnn(pooled, logit, held, job.config)
    net = drop_silent(fitted.net, pooled[own])  # no "+0.00" concept reaches the report
    _, val_r2 = held_out(net, pooled[held], logit[held])
    with torch.no_grad():
        share = net.contributions(net.encode(pooled[own])).mean(dim=0)
    maps = spatial_set(folder, index, ridge(pooled, logit))
    if maps.held.all() or not maps.held.any():
        raise ValueError(f"{len(maps.held)} feature maps are too few to hold "
                         f"{VAL_FRACTION:.0%} out")
    fitted_maps, spatial_scores = choose_spatial_xnn(maps, job.config)
    spatial_net = drop_silent_maps(fitted_maps.net, maps.spatial[maps.own])
    spatial = maps.spatial[maps.own]
    rows = spatial.permute(0, 2, 3, 1).reshape(-1, spatial.shape[1])
    # as many NMF concepts as the spatial XNN kept on the same maps (the pooled k is 1 wherever
    # one mixed concept is faithful: an NMF of one concept cannot show two parts)
    bank = fit_nmf(rows, spatial_net.concepts, seed=job.config.seed + index)
    record = {"class": data.name, "index": index,
              "config": job.config.as_dict(), "channels": int(pooled.shape[1]),
              "concepts": net.concepts, "hidden": job.config.hidden,
              "xnn": net.state_dict(), "scores": scores, "val_r2": val_r2,
              "mean_contribution": share.tolist(), "images": int(own.sum()),
              "nmf": bank, "nmf_images": len(spatial),
              "spatial": {"concepts": spatial_net.concepts, "xnn": spatial_net.state_dict(),
                          "val_r2": held_out_maps(spatial_net, maps)[0], "scores": spatial_scores}}
    folder.write(name, record)
    return entry_of(record)


def entry_of(record: dict) -> dict:
    return {"class": record["class"], "file": class_file(record["index"]),
            "concepts": record["concepts"], "val_r2": record["val_r2"],
            "mean_contribution": record["mean_contribution"], "images": record["images"],
            "scores": record["scores"], "nmf_images": record["nmf_images"],
            "spatial_concepts": record["spatial"]["concepts"],
            "spatial_val_r2": record["spatial"]["val_r2"]}


def write_card(job: ConceptJob, entries: dict[int, dict], summary: dict) -> dict:
    """``concepts.json``, written last (what the concept methods read); ``summary``: of the
    features (``summary_of``)."""
    card = {"model": job.model, "model_card": job.model_card,
            "model_sha256": summary["model_sha256"], "layer": summary["layer"],
            "channels": summary["channels"], "images": summary["images"],
            "skipped": summary["skipped"], "archive": job.archive, "split": job.split,
            "config": job.config.as_dict(),
            "classes": {str(i): entries[i] for i in sorted(entries)},
            "code_version": code_version(),
            "finished": datetime.now(UTC).isoformat(timespec="microseconds")}
    ConceptFolder(job.out).write_card(card)
    return card


def learn_concepts(job: ConceptJob) -> dict:
    """Every step in this process, one after the other (the flow runs them as tasks)."""
    summary = extracted(job)
    if summary is None:
        parts = extraction_parts(job)
        for rows in parts:
            extract_part(job, rows)
        summary = merge_features(job, [int(rows.index[0]) for rows in parts])
    entries = {i: train_class(job, i) for i in classes_to_train(job)}
    return write_card(job, entries, summary)


__all__ = ["CARD", "ConceptJob", "learn_concepts"]
