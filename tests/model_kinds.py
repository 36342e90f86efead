"""The built-in synthetic CNN saved the ways users ship a model, each with a card naming its
classes: a state_dict (the card names its architecture), TorchScript (``torch.jit.trace``), an
exported program with its module tree, and a flat one (torch's TorchScript converter, then
``torch.export`` with a dynamic batch, as a user converting an old TorchScript file does)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml

from fidoflow.pipeline.models.loading import load_model

KINDS = ("state_dict", "torchscript", "exported", "exported-flat")
SIZE = 96


def _flat_program(net: torch.nn.Module, probe: tuple[torch.Tensor]) -> torch.export.ExportedProgram:
    from torch._export.converter import TS2EPConverter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = TS2EPConverter(torch.jit.trace(net, probe), probe).convert()
        return torch.export.export(converted.module(), probe,
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


def save_as(kind: str, folder: Path, retrained: bool = False) -> Path:
    """The synthetic CNN saved as ``kind`` in ``folder``, its card beside it; ``retrained``:
    its weights moved a little, as another training of the same network would."""
    loaded = load_model("synthetic-cnn")
    net, probe = loaded.module, (torch.rand(2, 3, SIZE, SIZE),)
    if retrained:
        with torch.no_grad():
            for weight in net.parameters():
                weight.add_(torch.randn_like(weight), alpha=1e-3)
    folder.mkdir(parents=True, exist_ok=True)
    card: dict = {"classes": loaded.class_names, "input_size": SIZE}
    path = folder / f"birds-{kind}.pt"
    if kind == "state_dict":
        torch.save(net.state_dict(), path)
        card["architecture"] = "fidoflow:synthetic-cnn"
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.trace(net, probe), path)
    elif kind == "exported":
        path = path.with_suffix(".pt2")
        batch = torch.export.Dim("batch", min=1)
        torch.export.save(torch.export.export(net, probe, dynamic_shapes={"x": {0: batch}}), path)
    elif kind == "exported-flat":
        path = path.with_suffix(".pt2")
        torch.export.save(_flat_program(net, probe), path)
    else:
        raise ValueError(kind)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(card))
    return path
