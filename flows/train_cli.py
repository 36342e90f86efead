"""``fidoflow train ARCHIVE --out MODEL_DIR``: the CLI of the train-classifier flow. Its options
are projected from ``TrainSettings`` (flows/train_settings.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The ``train`` sub-command: ARCHIVE, --out, and one option per training setting."""
    from .settings import add_cli_options
    from .train_settings import TrainSettings

    train = commands.add_parser(
        "train", help="train a fine-grained classifier (class maps, diversification block, "
                      "gradient-boosting loss) on ARCHIVE's training images")
    train.add_argument("archive", metavar="ARCHIVE",
                       help="any archive fidoflow reads (ImageFolder, CUB, manifest, ...) with "
                            "labels; its train split is used when it has one")
    train.add_argument("--out", required=True, metavar="MODEL_DIR",
                       help="output folder: model.pt + model.yaml, checkpoint.pt, "
                            "metrics.parquet; an existing checkpoint is resumed")
    add_cli_options(train, TrainSettings)


def run_train(args: argparse.Namespace) -> int:
    """Run the train-classifier flow against one Prefect API; print where the model is."""
    from .cli import flush_prefect_logs
    from .server import prefect_api
    from .settings import settings_from_cli
    from .train_settings import TrainSettings

    archive = str(Path(args.archive).resolve())
    if not Path(archive).exists():
        raise FileNotFoundError(f"archive not found: {args.archive}")
    settings = settings_from_cli(args, TrainSettings)
    settings.to_job(archive, args.out)  # refuse bad settings before Prefect starts

    def import_flow() -> None:
        from . import train  # noqa: F401

    with prefect_api(meanwhile=import_flow) as api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from .train import train_classifier

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                summary = train_classifier(archive, args.out, settings, progress=True)
            finally:
                flush_prefect_logs()
    test = summary["test_accuracy"]
    print(f"best epoch {summary['best_epoch']} of {summary['epochs']}: validation accuracy "
          f"{summary['val_accuracy']:.3f}"
          + (f", test accuracy {test:.3f}" if test is not None else "")
          + f" ({summary['classes']} classes, {summary['images']['train']} training images)")
    print(f"model: {summary['model']}  (fidoflow run SOURCE --out RUN --model {summary['model']})")
    return 0
