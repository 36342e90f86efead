"""NMF concepts, the baseline beside XNN (CRAFT's idea; pipeline/concepts/nmf.py): the target
class's concept bank, fitted by ``fidoflow concepts`` on the same layer; per image, where each
concept is (its coefficients over the feature map: the concept's map) and its contribution
(gradient of the logit × the concept's part of the activations)."""

from __future__ import annotations

import torch

from fidoflow.pipeline.concepts.bank import ConceptBank
from fidoflow.pipeline.concepts.features import layer_gradient
from fidoflow.pipeline.concepts.method import ClassConcepts, ConceptConfig, ConceptMethod
from fidoflow.pipeline.concepts.nmf import project
from fidoflow.pipeline.methods.registry import register


@register("nmf", ConceptConfig, "NMF concepts (CRAFT's factorisation, Fel et al. 2023) of the "
          "target class at the XNN's layer: each concept's map and its gradient × activation "
          "contribution", run_options=("concepts",))
class Nmf(ConceptMethod):
    """Coefficient maps of the class's NMF concepts; ``joint`` their contribution-weighted sum."""

    def concepts_of(self, bank: ConceptBank, target: int, images: torch.Tensor
                    ) -> ClassConcepts | None:
        concepts = bank.nmf(target)
        if concepts is None:
            return None
        targets = torch.full((len(images),), target, device=images.device)
        features, gradient, logits = layer_gradient(self.model, bank.layer, images, targets)
        n, channels, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, channels).cpu()
        coefficients = project(rows, concepts).view(n, height * width, -1)  # (N, hw, k)
        along = gradient.permute(0, 2, 3, 1).reshape(n, height * width, channels).cpu() \
            @ concepts.T  # (N, hw, k): the logit's slope along each concept, per position
        contribution = (coefficients * along).sum(dim=1)
        activation = coefficients.mean(dim=1)
        weight = torch.where(activation > 0, contribution / activation.clamp_min(1e-12),
                             torch.zeros_like(activation))
        logit = logits[:, target].cpu()
        maps = coefficients.permute(0, 2, 1).reshape(n, -1, height, width)
        return ClassConcepts(activation, weight, maps, logit, logit - contribution.sum(dim=1))
