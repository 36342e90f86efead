"""Rewrite a frozen classifier into a cheaper equivalent one for attribution.

FIDO runs the classifier forward and backward thousands of times with its weights frozen, so
work that only exists for training is pure cost: an eval-mode BatchNorm is an affine map that
folds into the convolution before it, and a convolution that pads with a separate ``ZeroPad2d``
(TensorFlow "SAME" convolutions, as in the EfficientNet families) pays a copy of its input when
the padding is symmetric and the convolution could pad itself. On a 2-core CPU these two rewrites
make an EfficientNet-Lite0 optimisation step ~1.5× faster (bench/RESULTS.md).

The rewrite is checked where it is relied on: the fused module must give the original's logits
on a probe batch, otherwise the original is used and the reason is returned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass(frozen=True)
class FusionReport:
    """What ``fuse_frozen`` did: folded BatchNorms and paddings, or why it kept the original."""

    batchnorms: int = 0
    paddings: int = 0
    kept_original: str | None = None


class _ConvLeafTracer(fx.Tracer):
    """Keeps every convolution (subclasses included) and BatchNorm as one node to pattern-match."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(module, qualified_name)


def fold_batchnorms(graph_module: fx.GraphModule) -> int:
    """Fold each eval-mode BatchNorm2d whose only input is a convolution used nowhere else."""
    modules = dict(graph_module.named_modules())
    folded = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        producer = node.args[0]
        if (not isinstance(producer, fx.Node) or producer.op != "call_module"
                or not isinstance(modules[producer.target], nn.Conv2d) or len(producer.users) != 1):
            continue
        bn = modules[node.target]
        if bn.training or not bn.track_running_stats:
            continue
        conv = fuse_conv_bn_eval(modules[producer.target], bn)
        graph_module.set_submodule(producer.target, conv)
        modules[producer.target] = conv
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
        folded += 1
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return folded


def fold_static_paddings(module: nn.Module) -> int:
    """Let "SAME" convolutions pad themselves where their separate zero padding is symmetric."""
    folded = 0
    for conv in module.modules():
        pad = getattr(conv, "static_padding", None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(pad, nn.ZeroPad2d):
            continue
        left, right, top, bottom = pad.padding
        if left != right or top != bottom or tuple(conv.padding) != (0, 0) or conv.padding_mode != "zeros":
            continue
        conv.padding = (top, left)
        conv.static_padding = nn.Identity()
        folded += 1
    return folded


def fuse_frozen(module: nn.Module, probe: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, FusionReport]:
    """A cheaper module computing the same logits as ``module`` (in eval mode) on ``probe``-like
    inputs, with a report; the original module when it cannot be traced or the check fails."""
    module = module.eval()
    try:
        graph = _ConvLeafTracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - TorchScript, exported programs, dynamic control flow
        return module, FusionReport(kept_original=f"not traceable: {type(exc).__name__}")
    fused = fx.GraphModule(copy.deepcopy(module), graph, type(module).__name__)
    batchnorms = fold_batchnorms(fused)
    paddings = fold_static_paddings(fused)
    if batchnorms + paddings == 0:
        return module, FusionReport(kept_original="nothing to fold")
    with torch.no_grad():
        expected, got = module(probe), fused(probe)
    scale = expected.abs().max().clamp_min(1.0)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=rtol * scale):
        return module, FusionReport(kept_original="fused module disagreed with the original on the probe")
    return fused, FusionReport(batchnorms, paddings)
