"""Spatial XNN concepts (pipeline/concepts/spatial_xnn.py): per image, the target class's few
concepts, each with its contribution to the logit and its map. A concept's map is the concept
itself, read at every position of the layer, so no backward pass is needed; the contributions
are the head's weights times the maps' means and sum to the rebuilt logit."""

from __future__ import annotations

import torch

from fidoflow.pipeline.concepts.bank import ConceptBank
from fidoflow.pipeline.concepts.features import check_spatial, tapped
from fidoflow.pipeline.concepts.method import ClassConcepts, ConceptConfig, ConceptMethod
from fidoflow.pipeline.methods.registry import register


@register("xnn-spatial", ConceptConfig, "spatial XNN concepts (fidoflow's step beyond Qi et al. "
          "2017): the target class's concepts read at each position of the layer, their "
          "contributions to the logit, each concept's own map", run_options=("concepts",))
class XnnSpatial(ConceptMethod):
    """The concept maps of the class's spatial XNN; ``joint`` their contribution-weighted sum."""

    def concepts_of(self, bank: ConceptBank, target: int, images: torch.Tensor
                    ) -> ClassConcepts | None:
        net = bank.spatial_xnn(target)
        if net is None:
            return None
        net = net.to(images.device)
        with torch.no_grad(), tapped(self.model, bank.layer) as seen:
            logit = self.model(images)[:, target].float()
            maps = net.encode(check_spatial(seen.get("features"), bank.layer).float())
        activation = maps.mean(dim=(2, 3))
        weight = net.head.weight[0].expand_as(activation)
        return ClassConcepts(activation, weight, maps, logit, net.head.bias.expand(len(images)))
