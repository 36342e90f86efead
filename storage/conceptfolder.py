"""The output folder of ``fidoflow concepts``: the features of one pass over the archive, one
file per class (its XNN and its NMF concept bank), and a card the concept methods read.

    <dir>/features.pt        logits, labels, image ids of every image (the classes to train)
    <dir>/training/background.pt       pooled features and logits of a spread of the images
    <dir>/training/class-00012.pt      pooled features and class 12's logit of its own images
    <dir>/parts/features-00000256.pt   one extraction task's images from row 256 (until merged)
    <dir>/samples/class-00012.pt       spatial activations of class 12's first images (NMF data)
    <dir>/class-00012.pt     class 12: XNN state, its k and scores per k, NMF bank
    <dir>/concepts.json      the card: model, layer, settings, per class k, R², files

Every file is written under a temporary name and renamed, the card last: a killed training
keeps the classes it finished, and a rerun trains only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from .runfolder import RunFolder

FEATURES = "features.pt"
PARTS = "parts"  # the extraction tasks' features until they are merged
CARD = "concepts.json"


TRAINING_BACKGROUND = "training/background.pt"
SPATIAL_BACKGROUND = "training/spatial-background.pt"  # feature maps of every class, spread


def training_file(index: int) -> str:
    """Class ``index``'s own images' pooled features: with the background, what its XNN is
    fitted on (a class task reads these two, not every image's features)."""
    return f"training/class-{index:05d}.pt"


def class_file(index: int) -> str:
    return f"class-{index:05d}.pt"


def part_file(first: int) -> str:
    """The features of the extraction task whose rows start at ``first``."""
    return f"{PARTS}/features-{first:08d}.pt"


def sample_file(index: int) -> str:
    """Class ``index``'s spatial activations, ids and logits: what its NMF bank and (with the
    spatial background) its spatial XNN are fitted on."""
    return f"samples/class-{index:05d}.pt"


@dataclass
class ConceptFolder:
    root: str

    def __post_init__(self) -> None:
        self.folder = RunFolder(self.root)

    def exists(self, name: str) -> bool:
        return self.folder.exists(*name.split("/"))

    def read(self, name: str) -> dict:
        return self.folder.read_torch(*name.split("/"))

    def write(self, name: str, obj: dict) -> None:
        self.folder.write_torch(obj, *name.split("/"))

    def remove(self, name: str) -> None:
        self.folder.remove(*name.split("/"))

    def read_card(self) -> dict:
        if not self.folder.exists(CARD):
            raise FileNotFoundError(f"{self.root} holds no {CARD}: train concepts with "
                                    "fidoflow concepts ARCHIVE --model M --out DIR")
        return self.folder.read_json(CARD)

    def write_card(self, card: dict) -> None:
        self.folder.write_json(card, CARD)
