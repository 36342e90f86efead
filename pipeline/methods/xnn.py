"""XNN concepts (Qi, Khorram & Li; pipeline/concepts/xnn.py): per image, the target class's few
concepts, each with its contribution to the logit and its map. A concept's map is Grad-CAM (the
registered method, through captum) of that concept unit at the concepts' own layer: the classifier
and the class's XNN are one network whose outputs are the concepts."""

from __future__ import annotations

import torch
from torch import nn

from fidoflow.pipeline.concepts.bank import ConceptBank
from fidoflow.pipeline.concepts.features import FeatureLayer, check_spatial, tapped
from fidoflow.pipeline.concepts.method import ClassConcepts, ConceptConfig, ConceptMethod
from fidoflow.pipeline.concepts.xnn import XNN
from fidoflow.pipeline.methods.registry import kind, register


class ConceptUnits(nn.Module):
    """Images -> the concepts z (N, k) of one class's XNN, through the feature layer, which is
    exposed as the module ``at`` so that a layer method can attribute to it."""

    def __init__(self, classifier: nn.Module, layer: FeatureLayer, xnn: XNN) -> None:
        super().__init__()
        self.classifier, self.layer, self.xnn = classifier, layer, xnn
        self.at = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with tapped(self.classifier, self.layer) as seen:
            self.classifier(images)
        features = self.at(check_spatial(seen.get("features"), self.layer))
        return self.xnn.encode(features.float().mean(dim=(2, 3)))


@register("xnn", ConceptConfig, "XNN concepts (Qi et al. 2017): the target class's few concepts "
          "(trained by fidoflow concepts), their contributions to the logit, one Grad-CAM map "
          "per concept unit", run_options=("concepts",))
class Xnn(ConceptMethod):
    """Contributions z·w and one Grad-CAM map per concept; ``joint`` their weighted sum."""

    def concepts_of(self, bank: ConceptBank, target: int, images: torch.Tensor
                    ) -> ClassConcepts | None:
        net = bank.xnn(target)
        if net is None:
            return None
        net = net.to(images.device)
        with torch.no_grad(), tapped(self.model, bank.layer) as seen:
            logit = self.model(images)[:, target].float()
            z = net.encode(check_spatial(seen.get("features"), bank.layer).float()
                           .mean(dim=(2, 3)))
        units = ConceptUnits(self.model, bank.layer, net)
        gradcam = kind("gradcam")
        with gradcam.method(units, gradcam.make_config({"layer": "at"})) as cam:
            maps = torch.stack([
                cam.attribute(images, torch.full((len(images),), i, device=images.device)
                              ).maps["joint"] for i in range(net.concepts)], dim=1)
        weight = net.head.weight[0].expand_as(z)
        return ClassConcepts(z, weight, maps, logit, net.head.bias.expand(len(images)))
