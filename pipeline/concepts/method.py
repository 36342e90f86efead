"""What the concept methods (``xnn``, ``nmf``) share: their setting, their maps and rows, and
the step they run. A concept method writes one step, ``concepts_of``: for the images of one
target class, each concept's activation, weight and map; the base groups images by target,
fills the ``concepts/`` rows, and makes ``joint`` the contribution-weighted sum of the concept
maps (positive contributions only: a concept that speaks against the class is not where the
class is), so the method is re-classified and evaluated like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fidoflow.pipeline.concepts.bank import CONCEPT_MAPS, ConceptBank, load_bank
from fidoflow.pipeline.methods.base import Attribution, Method, unit_peak


@dataclass(frozen=True)
class ConceptConfig:
    """``concepts``: the folder ``fidoflow concepts`` wrote (``--concepts DIR``)."""

    concepts: str | None = None


@dataclass
class ClassConcepts:
    """One target class's concepts for its images: ``activation``, ``weight`` (N, k), ``maps``
    (N, k, h, w) >= 0, ``logit`` (N,) the classifier's, ``bias`` (N,)."""

    activation: torch.Tensor
    weight: torch.Tensor
    maps: torch.Tensor
    logit: torch.Tensor
    bias: torch.Tensor

    def to(self, device: torch.device) -> ClassConcepts:
        return ClassConcepts(*(t.detach().to(device) for t in (
            self.activation, self.weight, self.maps, self.logit, self.bias)))


class ConceptMethod(Method):
    """Base of the concept methods (see the module docstring)."""

    map_names: ClassVar[tuple[str, ...]] = ("joint", *CONCEPT_MAPS)
    scalar_names: ClassVar[tuple[str, ...]] = ("concepts", "reconstructed", "logit")
    table: ClassVar[str | None] = "concepts"
    min_batch: ClassVar[int] = 1
    reads_layers: ClassVar[bool] = True

    def concepts_of(self, bank: ConceptBank, target: int, images: torch.Tensor
                    ) -> ClassConcepts | None:
        """The step a concept method writes; None when the class has no trained concepts."""
        raise NotImplementedError

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        bank = load_bank(self.config.concepts)
        n, (height, width) = len(images), images.shape[-2:]
        maps = {name: images.new_zeros(n, height, width) for name in self.map_names}
        scalars = {name: images.new_full((n,), float("nan")) for name in self.scalar_names}
        scalars["concepts"].zero_()
        rows: list[dict] = []
        for target in torch.unique(targets).tolist():
            index = torch.nonzero(targets == target)[:, 0]
            found = self.concepts_of(bank, int(target), images[index])
            if found is None:
                continue
            found = found.to(images.device)
            contribution = found.activation * found.weight
            k = contribution.shape[1]
            concept_maps = torch.nn.functional.interpolate(
                found.maps.float(), size=(height, width), mode="bilinear", align_corners=False)
            concept_maps = unit_peak(concept_maps.clamp_min(0).flatten(0, 1)).view_as(
                concept_maps)
            for i in range(k):
                maps[CONCEPT_MAPS[i]][index] = concept_maps[:, i]
            weights = contribution.clamp_min(0)[:, :, None, None]
            maps["joint"][index] = unit_peak((weights * concept_maps).sum(dim=1))
            reconstructed = contribution.sum(dim=1) + found.bias
            scalars["concepts"][index] = float(k)
            scalars["reconstructed"][index] = reconstructed
            scalars["logit"][index] = found.logit
            for j, image in enumerate(index.tolist()):
                rows += [{"image": image, "target": int(target), "concept": i + 1,
                          "activation": float(found.activation[j, i]),
                          "weight": float(found.weight[j, i]),
                          "contribution": float(contribution[j, i]),
                          "bias": float(found.bias[j]), "reconstructed": float(reconstructed[j]),
                          "logit": float(found.logit[j])} for i in range(k)]
        return Attribution(targets, maps, scalars, rows)
