"""A trained concept folder as the concept methods read it: the layer, and per class its XNN,
its spatial XNN and its NMF concept bank (loaded once per process and card: every shard of a
worker shares them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fidoflow.pipeline.concepts.features import FeatureLayer
from fidoflow.pipeline.concepts.spatial_xnn import SpatialXNN
from fidoflow.pipeline.concepts.xnn import XNN
from fidoflow.pipeline.models.loading import model_identity
from fidoflow.storage.conceptfolder import ConceptFolder

MAX_CONCEPTS = 5  # concept maps a method stores (c1..c5); a class's k is at most this
CONCEPT_MAPS = tuple(f"c{i}" for i in range(1, MAX_CONCEPTS + 1))


@dataclass
class ConceptBank:
    """What ``fidoflow concepts`` wrote into ``root``."""

    root: str
    card: dict
    layer: FeatureLayer
    _classes: dict[int, dict] = field(default_factory=dict, repr=False)

    def _record(self, index: int) -> dict | None:
        if index not in self._classes:
            entry = self.card["classes"].get(str(index))
            self._classes[index] = (ConceptFolder(self.root).read(entry["file"])
                                    if entry else None)
        return self._classes[index]

    def xnn(self, index: int) -> XNN | None:
        """Class ``index``'s XNN (eval mode, frozen), or None when it was not trained."""
        record = self._record(index)
        if record is None:
            return None
        net = XNN(record["channels"], record["concepts"], record["hidden"])
        net.load_state_dict(record["xnn"])
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def spatial_xnn(self, index: int) -> SpatialXNN | None:
        """Class ``index``'s spatial XNN (eval mode, frozen), or None when it was not trained."""
        record = self._record(index)
        if record is None:
            return None
        spatial = record["spatial"]
        net = SpatialXNN(record["channels"], spatial["concepts"], record["hidden"])
        net.load_state_dict(spatial["xnn"])
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def nmf(self, index: int) -> torch.Tensor | None:
        """Class ``index``'s concept bank H (k, C), or None when it was not trained."""
        record = self._record(index)
        return None if record is None else record["nmf"]


_BANKS: dict[tuple[str, str], ConceptBank] = {}


def load_bank(root: str) -> ConceptBank:
    """The folder's bank, kept while its card is unchanged (a retrained folder is re-read)."""
    card = ConceptFolder(root).read_card()
    key = (root, str(card.get("finished")))
    if key not in _BANKS:
        _BANKS[key] = ConceptBank(root, card, FeatureLayer(card["layer"]["name"],
                                                           card["layer"]["side"]))
    return _BANKS[key]


def check_concepts(root: str | None, model: str, model_card: str | None, method: str) -> None:
    """A one-line error before a run starts when a concept method has no folder, or a folder
    trained on another model: another name, or another file (or card) at the same path."""
    if root is None:
        raise ValueError(f"method {method!r} reads trained concepts: give --concepts DIR "
                         "(made by fidoflow concepts ARCHIVE --model M --out DIR)")
    card = ConceptFolder(root).read_card()
    if card["model"] != model:
        raise ValueError(f"{root} holds concepts of the model {card['model']!r}, not {model!r}")
    if "model_sha256" not in card:  # written before the spatial XNN and the model's sha256
        raise ValueError(f"{root} was written by an older fidoflow: learn the concepts again "
                         "with fidoflow concepts (it re-extracts and retrains)")
    if card["model_sha256"] != model_identity(model, model_card):
        raise ValueError(f"{root} holds concepts of another {model} (its weights or card have "
                         "changed since): learn them again with fidoflow concepts")
