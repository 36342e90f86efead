"""A classifier's layers by name, for the methods and concept readers that hook one (Grad-CAM,
XNN, NMF): found by dotted name, refused in one line where hooks cannot reach them."""

from __future__ import annotations

import difflib

import torch
from torch import nn

# the one aten operator of an unflattened exported program's leaf -> the layer it was
ATEN_LAYERS = {"conv2d": "Conv2d", "batch_norm": "BatchNorm2d", "linear": "Linear",
               "relu": "ReLU", "relu_": "ReLU", "adaptive_avg_pool2d": "AdaptiveAvgPool2d",
               "adaptive_max_pool2d": "AdaptiveMaxPool2d", "avg_pool2d": "AvgPool2d"}


def type_name(module: nn.Module) -> str:
    """A module's class name, also for a TorchScript module (which keeps it as
    ``original_name``) and for a leaf of an unflattened exported program (an
    ``InterpreterModule``, named here by the one layer operator its graph runs)."""
    graph = getattr(module, "graph", None)
    if type(module).__name__ == "InterpreterModule" and graph is not None:
        ops = [str(node.target).split(".") for node in graph.nodes if node.op == "call_function"]
        if len(ops) == 1 and len(ops[0]) > 1 and ops[0][1] in ATEN_LAYERS:
            return ATEN_LAYERS[ops[0][1]]
    return getattr(module, "original_name", type(module).__name__)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A sub-module by dotted name, e.g. ``net._conv_head`` or ``features.4``, that takes the
    forward hooks a layer attribution needs."""
    modules = dict(model.named_modules())
    if name not in modules:
        named = [n for n in modules if n]
        near = difflib.get_close_matches(name, named, n=8, cutoff=0.3)
        listed = (f"layers with a near name: {', '.join(near)}" if near
                  else f"its last layers: {', '.join(named[-8:])}")
        raise ValueError(f"model has no layer {name!r}; {listed} ({len(named)} in all)")
    layer = modules[name]
    if isinstance(layer, torch.jit.ScriptModule):
        raise ValueError(  # noqa: TRY004 - a user's model, not a caller's argument type
            f"layer {name!r} ({type_name(layer)}) is part of a TorchScript model, whose layers "
            "take no hooks, and this needs one: give the model as a state_dict with a model "
            "card, or use a method that needs no layer (scd, ig, saliency, rise, ...)")
    return layer
