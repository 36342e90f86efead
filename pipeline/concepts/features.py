"""The frozen layer concepts are learned on: found once by a probe forward, read by a hook, for
training and for explaining alike.

The layer is the one named (``layer``), else found on the classifier as attribution runs it
(batch norms folded, so only leaf modules run): the input of the last global pooling module
that runs (EfficientNet's ``_avg_pooling``, torchvision's ``avgpool``), else the output of the
last leaf module that gives a spatial map (N, C, h, w with h·w > 1) of other than one channel
per class (the synthetic CNN's last ReLU; a class-map network's backbone output, not its class
maps). On a flat graph (pipeline/models/layers.py) the same rule reads its operator nodes: the
input of the last global pooling (or spatial mean), else the last spatial map. Its activations
are the spatial features (the NMF baseline factorises them); their spatial mean ``(N, C)`` is
the feature vector ``x`` an XNN reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import fx, nn

from fidoflow.pipeline.models.layers import find_layer, flat_graph, operator_kind, type_name

POOLS = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d")


@dataclass(frozen=True)
class FeatureLayer:
    """A module of the classifier and which of its tensors is the feature map: its ``input``
    (a pooling module) or its ``output``."""

    name: str
    side: str  # "input" or "output"

    def describe(self) -> str:
        return f"{self.side} of {self.name}"


@torch.no_grad()
def feature_layer(model: nn.Module, probe: torch.Tensor, name: str | None = None
                  ) -> FeatureLayer:
    """The layer concepts are read from (the module docstring's rule); ``probe``: a batch the
    model takes, run once to see which modules run and what they give."""
    if name is not None:
        find_layer(model, name)
        return FeatureLayer(name, "output")
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError(  # noqa: TRY004 - a user's model, not a caller's argument type
            "a TorchScript module's layers take no hooks, and concepts are read from a layer: "
            "read it through LoadedModel.on(device, layers=True), which converts it")
    flat = flat_graph(model)
    if flat is not None:
        found = graph_feature_layer(flat[1], model(probe).shape[1])
        if found is None:
            raise ValueError("no node of the model's graph gives a spatial feature map to read "
                             "concepts from; name one with --layer")
        return found
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                calls.append((name, inputs[0], output))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    try:
        classes = model(probe).shape[1]
    finally:
        for handle in handles:
            handle.remove()
    kinds = {n: type_name(m) for n, m in leaves}
    pools = [n for n, _, _ in calls if kinds[n] in POOLS]
    if pools:
        return FeatureLayer(pools[-1], "input")
    maps = [n for n, _, out in calls if out.dim() == 4 and out.shape[2] * out.shape[3] > 1
            and out.shape[1] != classes]
    if not maps:
        raise ValueError("no layer of the model gives a spatial feature map to read concepts "
                         "from; name one with --layer")
    return FeatureLayer(maps[-1], "output")


def _global_pool(node: fx.Node) -> bool:
    """A pooling operator, or a mean over the two spatial axes of a 4-d tensor."""
    if operator_kind(node.target) in POOLS:
        return True
    dims = node.args[1] if len(node.args) > 1 else None
    return (operator_kind(node.target) == "mean" and isinstance(dims, (list, tuple))
            and {d % 4 for d in dims} == {2, 3})


def _spatial(node: fx.Node, classes: int) -> bool:
    shape = getattr(node.meta.get("val"), "shape", ())
    return (len(shape) == 4 and isinstance(shape[2] * shape[3], int) and shape[2] * shape[3] > 1
            and shape[1] != classes)


def graph_feature_layer(graph: fx.GraphModule, classes: int) -> FeatureLayer | None:
    """The module docstring's rule on a flat graph's nodes (their shapes as export recorded
    them), for a model of ``classes`` outputs; None where no node gives a spatial map."""
    nodes = [n for n in graph.graph.nodes if n.op == "call_function"]
    pools = [n for n in nodes if _global_pool(n) and isinstance(n.args[0], fx.Node)]
    if pools:
        return FeatureLayer(pools[-1].args[0].name, "output")
    maps = [n for n in nodes if _spatial(n, classes)]
    return FeatureLayer(maps[-1].name, "output") if maps else None


@contextmanager
def tapped(model: nn.Module, layer: FeatureLayer, leaf: bool = False
           ) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward of ``model`` leaves the layer's activations (N, C, h, w) in the
    yielded dict under ``"features"``. ``leaf``: the forward goes on from a detached copy that
    requires grad, so the gradient of any output with respect to the layer can be taken."""
    module = find_layer(model, layer.name)
    seen: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if leaf:
            tensor = tensor.detach().requires_grad_(True)
        seen["features"] = tensor
        return tensor

    def pre(_module: nn.Module, inputs: tuple) -> tuple:
        return (keep(inputs[0]), *inputs[1:])

    def post(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return keep(output)

    handle = (module.register_forward_pre_hook(pre) if layer.side == "input"
              else module.register_forward_hook(post))
    try:
        yield seen
    finally:
        handle.remove()


def check_spatial(features: torch.Tensor | None, layer: FeatureLayer) -> torch.Tensor:
    """The activations as (N, C, h, w), or a one-line error naming the layer."""
    if features is None:
        raise ValueError(f"the {layer.describe()} never ran in the model's forward; name "
                         "another with --layer")
    if features.dim() != 4:
        raise ValueError(f"the {layer.describe()} gives a {features.dim()}-d tensor; concepts "
                         "need a (N, C, h, w) feature map: name a convolutional layer with "
                         "--layer")
    return features


@torch.no_grad()
def extract(model: nn.Module, layer: FeatureLayer, images: torch.Tensor,
            batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled (N, C), spatial (N, C, h, w), logits (N, K))`` of ``images`` in [0, 1]."""
    pooled, spatial, logits = [], [], []
    with tapped(model, layer) as seen:
        for i in range(0, len(images), batch_size):
            seen.clear()
            out = model(images[i:i + batch_size])
            features = check_spatial(seen.get("features"), layer).float()
            pooled.append(features.mean(dim=(2, 3)).cpu())
            spatial.append(features.cpu())
            logits.append(out.float().cpu())
    return torch.cat(pooled), torch.cat(spatial), torch.cat(logits)


def layer_gradient(model: nn.Module, layer: FeatureLayer, images: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(activations, d logit_target / d activations, logits)`` of a batch, each (N, C, h, w)
    but the logits (N, K)."""
    with torch.enable_grad(), tapped(model, layer, leaf=True) as seen:
        logits = model(images)
        features = check_spatial(seen.get("features"), layer)
        chosen = logits.gather(1, targets.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(chosen, features)
    return features.detach().float(), gradient.float(), logits.detach().float()
