"""The projections of the settings declarations (fidoflow/pipeline/settings.py): one
``--option`` per field on the CLI (``add_cli_options``, ``settings_from_cli``) and one row per
field in docs/settings.md (``settings_markdown``). Switches take both spellings,
``--name`` and ``--no-name`` (argparse's ``BooleanOptionalAction``)."""

from __future__ import annotations

import argparse
from typing import Literal

from fidoflow.pipeline.settings import (
    ConceptSettings,
    RunSettings,
    Settings,
    TrainSettings,
    default_workers,
)

# ---- the docs' projection ------------------------------------------------------------------

def settings_markdown() -> str:
    """docs/settings.md: one row per setting of a run and of a training, as the CLI and the
    deployment form take them."""
    lines = ["# Run settings", "",
             "Generated from `pipeline/settings.py` (`python -m fidoflow.flows.docs`).",
             "The CLI takes each as `--name-with-dashes`; a deployment takes them by name in its",
             "`settings` parameter (`--param settings='{\"iterations\": 50}'`). Both validate",
             "them with the same model.", "", *settings_table(RunSettings), "",
             "## Training settings (`fidoflow train`, deployment `train-classifier/train`)", "",
             "A switch takes both spellings on the CLI: `--name` and `--no-name`.", "",
             *settings_table(TrainSettings), "",
             "## Concept settings (`fidoflow concepts`, deployment `learn-concepts/concepts`)",
             "", *settings_table(ConceptSettings)]
    return "\n".join(lines) + "\n"


def settings_table(model: type[Settings]) -> list[str]:
    rows = ["| CLI option | setting | type | default | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if info.default_factory is default_workers:  # this machine's count is no default
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
                "dask_address": "ADDRESS", "cluster": "CLASS", "cluster_options": "YAML"}


def cli_flag(name: str, default: object) -> str:
    """``--name-with-dashes``; ``--[no-]name`` for a switch (both spellings work)."""
    return ("--[no-]" if isinstance(default, bool) else "--") + name.replace("_", "-")


def add_cli_options(parser: argparse.ArgumentParser, model: type[Settings] = RunSettings,
                    skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of ``model`` but those in ``skip``.

    Every option defaults to "not given", so the settings model supplies defaults and bounds.
    """
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        flag = "--" + name.replace("_", "-")
        shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
        kinds = _literal_choices(info.annotation)
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, default=None,
                                help=f"{info.description} (default: {'on' if default else 'off'})",
                                action=argparse.BooleanOptionalAction)
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
