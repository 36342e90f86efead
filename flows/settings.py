"""The settings a person gives a run, declared once, and their projections.

``RunSettings`` is the one place a run option is named, typed, bounded and explained: the CLI's
options are projected from it (``add_cli_options``), a deployment takes it as its typed
``settings`` parameter (the Prefect UI draws its form from the same fields), and both are
validated by the same model, so ``iterations: 0`` fails alike from a shell and from a schedule.
``RunSettings.to_config`` resolves it into the ``RunConfig`` that run.json records. The same
projections serve every ``Settings`` model (flows/train_settings.py for ``fidoflow train``).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Literal, Self

from fidoflow.pipeline.archive.readers import FORMATS, SPLITS
from fidoflow.pipeline.imaging.decode import DEFAULT_BOMB_PIXELS, DEFAULT_MAX_PIXELS
from fidoflow.pipeline.imaging.infill import INFILLS
from fidoflow.pipeline.methods import parse_methods
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import RunConfig

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# options only a run over an archive has (the demo makes its own archive)
ARCHIVE_FIELDS = ("format", "split", "images_root", "label_map")


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


class Settings(BaseModel):
    """What every settings model shares: no unknown names, immutable, one-line errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Self:
        """Validate ``values``; a bad one raises ``ValueError`` with one line naming each field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError(one_line(exc)) from None


class RunSettings(Settings):
    """How to explain an archive: methods, FIDO's budget, sharding, model, device."""

    method: str | list[str] = Field(
        "scd", description="methods: a comma list of kinds (`fidoflow methods` lists them) or "
                           "variants NAME=KIND:key=value:key=value, e.g. "
                           "scd,cd,gradcam,knockoff=scd:infill=knockoff; a list of such strings "
                           "in a deployment, a repeated --method on the CLI")
    target: Literal["predicted", "label"] = Field(
        "predicted", description="the class the maps explain: the top-1 prediction or the "
                                 "manifest's label where it is one of the model's classes")
    samples: int | None = Field(None, ge=1, description="samples B per image and step "
                                                         "(default: the method's, 4)")
    iterations: int | None = Field(None, ge=1, description="optimisation steps (default 30)")
    mask_size: int | None = Field(None, ge=1, description="side h = w of every stored map and "
                                                         "of FIDO's mask (default 28)")
    infill: Literal[tuple(sorted(INFILLS))] | None = Field(  # type: ignore[valid-type]
        None, description="what replaces dropped pixels (default blur)")
    stop_change: float | None = Field(
        None, ge=0, description="stop an image early once its mask cells moved less than this "
                                "on average over 5 steps; 0 or unset never stops early")
    shard_size: int | None = Field(None, ge=1, description="images per task (default: every "
                                   "worker gets an equal shard in every round, at most 16)")
    batch_size: int | None = Field(None, ge=1, description="images per optimisation step "
                                                           "(default: 8 on a GPU, 1 on a CPU)")
    workers: int = Field(default_factory=default_workers, ge=1,
                         description="Dask worker processes of a local cluster")
    device: str = Field("auto", description="auto (a GPU when there is one), cpu, cuda, cuda:0")
    seed: int = Field(0, description="same inputs and seed give the same masks")
    model: str = Field("efficientnet-lite0",
                       description="built-in (efficientnet-lite0, synthetic-cnn), a TorchScript "
                                   "file, or a state_dict file with a model card")
    model_card: str | None = Field(None, description="model card (YAML/JSON) of a state_dict "
                                                     "model (default: <model>.yaml beside it)")
    trust_model_code: bool = Field(False, description="allow a fully pickled model (unpickling "
                                                      "runs code from the file)")
    explain_only: bool = Field(False, description="masks and predictions only: skip "
                                                  "re-classification, metrics and report")
    compile: bool = Field(False, description="torch.compile the classifier (GPU runs)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler "
                                                       "(tcp://host:port) instead of a local cluster")
    format: Literal[FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="force an archive reader instead of detecting it")
    split: Literal[SPLITS] = Field("all", description="keep the train or test rows only")  # type: ignore[valid-type]
    images_root: str | None = Field(None, description="where a COCO JSON's or manifest's image "
                                                      "paths are relative to")
    label_map: str | None = Field(None, description="CSV label_name,model_class mapping the "
                                                    "archive's labels to the model's classes")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1,
                            description="decoded images are shrunk under this many pixels")
    max_image_pixels: int = Field(DEFAULT_BOMB_PIXELS, ge=1,
                                  description="images above this many pixels are refused as "
                                              "decompression bombs")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: str | list[str]) -> str:
        """One comma string whichever way it came (repeated --method, a list in a deployment)."""
        text = value if isinstance(value, str) else ",".join(value)
        parse_methods(text)  # raises on an unknown kind or a malformed variant
        return text

    def to_config(self, archive: str, out: str) -> RunConfig:
        """The resolved run: methods built, local paths made absolute, files checked."""
        from fidoflow.pipeline.models.loading import BUILTINS

        model = self.model
        if model not in BUILTINS:
            if not Path(model).is_file():
                raise ValueError(f"unknown model {model!r}: neither a built-in "
                                 f"({', '.join(BUILTINS)}) nor a model file")
            model = absolute(model)
        for option in ("model_card", "label_map", "images_root"):
            value = getattr(self, option)
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"{option.replace('_', '-')} not found: {value}")
        methods = parse_methods(self.method, {
            "samples": self.samples, "iterations": self.iterations, "mask_size": self.mask_size,
            "infill": self.infill, "stop_change": self.stop_change})
        return RunConfig(
            source=archive if "://" in archive else absolute(archive), root=out,
            methods=methods, mask_size=self.mask_size or RunConfig.mask_size,
            target=self.target, model=model, shard_size=self.shard_size,
            batch_size=self.batch_size, seed=self.seed, workers=self.workers,
            device=self.device, compile=self.compile, analyse=not self.explain_only,
            format=self.format, split=self.split, images_root=absolute(self.images_root),
            model_card=absolute(self.model_card), trust_model_code=self.trust_model_code,
            label_map=absolute(self.label_map), max_pixels=self.max_pixels,
            max_image_pixels=self.max_image_pixels,
        )



def one_line(exc: ValidationError) -> str:
    """``iterations: must be >= 1 (got 0); device: ...`` from pydantic's multi-line report."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        # a check of ours names the problem itself; pydantic's own (bounds, types) get the value
        given = "" if error["type"] in ("missing", "value_error") else f" (got {error['input']!r})"
        problems.append(f"{field}: {message}{given}")
    return "invalid settings: " + "; ".join(problems)


def absolute(path: str | None) -> str | None:
    """``path`` resolved (None stays None): a deployment's worker may run elsewhere."""
    return None if path is None else str(Path(path).resolve())


# ---- the docs' projection ------------------------------------------------------------------

def settings_markdown() -> str:
    """docs/settings.md: one row per setting of a run and of a training, as the CLI and the
    deployment form take them."""
    from .train_settings import TrainSettings

    lines = ["# Run settings", "",
             "Generated from `flows/settings.py` and `flows/train_settings.py`",
             "(`python -m fidoflow.flows.settings > docs/settings.md`).",
             "The CLI takes each as `--name-with-dashes`; a deployment takes them by name in its",
             "`settings` parameter (`--param settings='{\"iterations\": 50}'`). Both validate",
             "them with the same model.", "", *settings_table(RunSettings), "",
             "## Training settings (`fidoflow train`, deployment `train-classifier/train`)", "",
             "A setting that is on by default is switched off on the CLI by `--no-name`.", "",
             *settings_table(TrainSettings)]
    return "\n".join(lines) + "\n"


def settings_table(model: type[Settings]) -> list[str]:
    rows = ["| CLI option | setting | type | default | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if name == "workers" and model is RunSettings:
            default = "min(2, cores)"
        kind = _literal_choices(info.annotation)
        shown = " \\| ".join(kind) if kind else _scalar_type(info.annotation).__name__
        if info.annotation is bool:
            shown = "flag"
        rows.append(f"| `{cli_flag(name, default)}` | `{name}` | {shown} | "
                    f"{'–' if default is None else f'`{default}`'} | {info.description} |")
    return rows


# ---- the CLI's projection -------------------------------------------------------------------

def pixel_count(text: str) -> int:
    """``40000000``, ``4e7``, ``40M``, ``40MP`` or ``1.5G`` pixels."""
    raw = text.strip().upper().removesuffix("P")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(raw[-1:], 1)
    try:
        return int(float(raw[:-1] if scale != 1 else raw) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 40M)") from None


CLI_PARSERS = {"max_pixels": pixel_count, "max_image_pixels": pixel_count}
CLI_METAVARS = {"max_pixels": "N", "max_image_pixels": "N", "stop_change": "TOL",
                "model_card": "YAML", "label_map": "CSV", "images_root": "DIR",
                "dask_address": "ADDRESS"}


def cli_flag(name: str, default: object) -> str:
    """``--name-with-dashes``; ``--no-name`` for a switch that is on by default."""
    return ("--no-" if default is True else "--") + name.replace("_", "-")


def add_cli_options(parser: argparse.ArgumentParser, model: type[Settings] = RunSettings,
                    skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of ``model`` but those in ``skip``.

    Every option defaults to "not given", so the settings model supplies defaults and bounds.
    """
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        flag = cli_flag(name, default)
        shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
        kinds = _literal_choices(info.annotation)
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, default=None, help=info.description,
                                action="store_false" if default is True else "store_true")
        elif name == "method":  # repeatable: each --method adds kinds or a variant
            parser.add_argument(flag, action="append", default=None, metavar="METHODS",
                                help=f"{info.description} (default: {default})")
        else:
            parser.add_argument(flag, default=None, help=f"{info.description}{shown}",
                                type=CLI_PARSERS.get(name, _scalar_type(info.annotation)),
                                choices=kinds, metavar=CLI_METAVARS.get(name))


def settings_from_cli(args: argparse.Namespace, model: type[Settings] = RunSettings) -> Settings:
    """The settings the user gave on the command line (others keep their defaults)."""
    given = {name: getattr(args, name) for name in model.model_fields
             if getattr(args, name, None) is not None}
    return model.parse(given)


def _literal_choices(annotation: object) -> list[str] | None:
    from typing import get_args, get_origin

    for arg in (annotation, *get_args(annotation)):
        if get_origin(arg) is Literal:
            return list(get_args(arg))
    return None


def _scalar_type(annotation: object) -> type:
    from typing import get_args

    for kind in (int, float):
        if annotation is kind or kind in get_args(annotation):
            return kind
    return str


if __name__ == "__main__":
    print(settings_markdown(), end="")
