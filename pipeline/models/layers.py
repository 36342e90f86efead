"""A classifier's layers by name, for the methods and concept readers that hook one (Grad-CAM,
XNN, NMF): found by dotted name, refused in one line where hooks cannot reach them.

A flat graph (an exported program without a module tree, or a TorchScript model converted to
one: pipeline/models/loading.py) has no modules that run. Its layers are its nodes: the output
of each aten operator, named as the graph names it (``convolution_48``, ``hardtanh_32``). The
first reader of such a layer gets a ``Tap``, an identity module put after the node, which takes
the same hooks a module does."""

from __future__ import annotations

import difflib

import torch
from torch import fx, nn

# the aten operator a layer runs -> the module it stands for
ATEN_LAYERS = {"conv2d": "Conv2d", "convolution": "Conv2d", "batch_norm": "BatchNorm2d",
               "linear": "Linear", "relu": "ReLU", "relu_": "ReLU", "hardtanh": "ReLU6",
               "hardtanh_": "ReLU6", "adaptive_avg_pool2d": "AdaptiveAvgPool2d",
               "adaptive_max_pool2d": "AdaptiveMaxPool2d", "avg_pool2d": "AvgPool2d"}


class Tap(nn.Module):
    """The output of one node of a flat graph, as a module: the identity, where a layer's
    readers put their hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def operator_kind(target: object) -> str:
    """``aten.convolution.default`` -> ``Conv2d``; an operator with no layer of its own keeps
    its name (``mean``, ``add``)."""
    parts = str(target).split(".")
    name = parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]
    return ATEN_LAYERS.get(name, name)


def type_name(module: nn.Module) -> str:
    """A module's class name, also for a TorchScript module (which keeps it as
    ``original_name``) and for a leaf of an unflattened exported program (an
    ``InterpreterModule``, named here by the one layer operator its graph runs)."""
    graph = getattr(module, "graph", None)
    if type(module).__name__ == "InterpreterModule" and graph is not None:
        ops = [node.target for node in graph.nodes if node.op == "call_function"]
        if len(ops) == 1 and operator_kind(ops[0]) in ATEN_LAYERS.values():
            return operator_kind(ops[0])
    return getattr(module, "original_name", type(module).__name__)


def flat_graph(model: nn.Module) -> tuple[str, fx.GraphModule] | None:
    """The flat graph inside ``model`` and its module name: a GraphModule whose operators run
    at its own level (its sub-modules only hold weights), or None."""
    for name, module in model.named_modules():
        if isinstance(module, fx.GraphModule) and any(
                node.op == "call_function" and operator_kind(node.target) == "Conv2d"
                for node in module.graph.nodes):
            return name, module
    return None


def node_layers(graph: fx.GraphModule) -> dict[str, str]:
    """A flat graph's layers: each operator node that gives a tensor, by name, with its kind."""
    return {node.name: operator_kind(node.target) for node in graph.graph.nodes
            if node.op == "call_function" and isinstance(node.meta.get("val", torch.empty(0)),
                                                         torch.Tensor)}


def with_norm(model: nn.Module, name: str) -> str:
    """The convolution ``name`` with the batch norm that follows it (the layer a built-in
    model gives once its norms are folded in): in a flat graph, the norm only it feeds; among
    modules, a BatchNorm2d listed right after it. Any other layer as it is."""
    flat, kinds = flat_graph(model), layer_kinds(model)
    if flat is not None:
        node = next((n for n in flat[1].graph.nodes if n.name == name), None)
        users = list(node.users) if node is not None else []
        follows = [users[0].name] if len(users) == 1 else []
    else:
        names = list(kinds)
        follows = names[names.index(name) + 1:][:1] if name in names else []
    return follows[0] if follows and kinds.get(follows[0]) == "BatchNorm2d" else name


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Every layer a reader can name, in the order the model lists them, with its kind: the
    named modules, but for a flat graph its nodes instead of its weight holders."""
    flat = flat_graph(model)
    if flat is None:
        return {name: type_name(m) for name, m in model.named_modules() if name}
    where = flat[0]

    def holds_weights(name: str) -> bool:  # the flat graph itself, or a module inside it
        return not where or name == where or name.startswith(where + ".")

    kinds = {name: type_name(m) for name, m in model.named_modules()
             if name and not holds_weights(name)}
    return kinds | node_layers(flat[1])


def tap(graph: fx.GraphModule, node_name: str) -> Tap:
    """The ``Tap`` after the node ``node_name`` of a flat graph, put there on first use (every
    user of the node then reads the tap's output, so a hook's replacement reaches them)."""
    target = f"tap_{node_name}"
    if hasattr(graph, target):
        return graph.get_submodule(target)
    node = next(n for n in graph.graph.nodes if n.name == node_name)
    graph.add_submodule(target, Tap())
    with graph.graph.inserting_after(node):
        tapped = graph.graph.call_module(target, (node,))
    node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
    graph.recompile()
    return graph.get_submodule(target)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A layer by name, e.g. ``net._conv_head``, ``features.4`` or a flat graph's
    ``convolution_48``, as a module that takes the forward hooks a layer attribution needs."""
    flat = flat_graph(model)
    if flat is not None and name in node_layers(flat[1]):
        return tap(flat[1], name)
    kinds = layer_kinds(model)
    if name not in kinds:
        named = list(kinds)
        near = difflib.get_close_matches(name, named, n=8, cutoff=0.3)
        listed = (f"layers with a near name: {', '.join(near)}" if near
                  else f"its last layers: {', '.join(named[-8:])}")
        raise ValueError(f"model has no layer {name!r}; {listed} ({len(named)} in all)")
    layer = model.get_submodule(name)
    if isinstance(layer, torch.jit.ScriptModule):
        raise ValueError(  # noqa: TRY004 - a user's model, not a caller's argument type
            f"layer {name!r} ({type_name(layer)}) is part of a TorchScript model, whose layers "
            "take no hooks, and this needs one: give the model as a state_dict with a model "
            "card, or use a method that needs no layer (scd, ig, saliency, rise, ...)")
    return layer
