"""``fidoflow train ARCHIVE --out MODEL_DIR``: the CLI of the train-classifier flow."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULTS_NOTE = "(default: %(default)s)"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """The ``train`` sub-command and its options."""
    from pipeline.archive.readers import FORMATS
    from pipeline.training.diversify import DiversifyConfig
    from pipeline.training.loop import TrainConfig
    from pipeline.training.loss import LOSSES
    from pipeline.training.network import BACKBONES

    base, div = TrainConfig(), DiversifyConfig()
    train = commands.add_parser(
        "train", help="train a fine-grained classifier (class maps, diversification block, "
                      "gradient-boosting loss) on ARCHIVE's training images")
    train.add_argument("archive", metavar="ARCHIVE",
                       help="any archive fidoflow reads (ImageFolder, CUB, manifest, ...) with "
                            "labels; its train split is used when it has one")
    train.add_argument("--out", required=True, metavar="MODEL_DIR",
                       help="output folder: model.pt + model.yaml, checkpoint.pt, "
                            "metrics.parquet; an existing checkpoint is resumed")
    train.add_argument("--format", choices=FORMATS, default=None)
    train.add_argument("--images-root", default=None, metavar="DIR")
    train.add_argument("--backbone", choices=BACKBONES, default=base.backbone)
    train.add_argument("--no-pretrained", action="store_true",
                       help="start efficientnet-lite0 from random weights, not ImageNet's")
    train.add_argument("--loss", choices=LOSSES, default=base.loss,
                       help="ce, or gce: cross-entropy over the true class and the top-k "
                            "negatives " + DEFAULTS_NOTE)
    train.add_argument("--top-k", type=positive_int, default=None,
                       help="negatives in gce (default: 15, or all when fewer)")
    train.add_argument("--no-diversify", action="store_true",
                       help="train without the diversification block")
    train.add_argument("--p-peak", type=float, default=div.p_peak,
                       help="probability of suppressing a class map's peak " + DEFAULTS_NOTE)
    train.add_argument("--p-patch", type=float, default=div.p_patch,
                       help="probability of suppressing each patch " + DEFAULTS_NOTE)
    train.add_argument("--patch-size", type=positive_int, default=div.patch,
                       help="patch side in class-map cells " + DEFAULTS_NOTE)
    train.add_argument("--alpha", type=float, default=div.alpha,
                       help="scale of suppressed activations " + DEFAULTS_NOTE)
    train.add_argument("--epochs", type=positive_int, default=base.epochs)
    train.add_argument("--lr", type=float, default=base.lr)
    train.add_argument("--batch-size", type=positive_int, default=base.batch_size)
    train.add_argument("--crop-scale", type=float, default=base.crop_scale,
                       help="random crops keep this fraction of the side or more; 1: no crop "
                            + DEFAULTS_NOTE)
    train.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    train.add_argument("--val-fraction", type=float, default=base.val_fraction,
                       help="share of the training images held out for validation "
                            + DEFAULTS_NOTE)
    train.add_argument("--seed", type=int, default=base.seed)
    train.add_argument("--device", default="auto",
                       help="auto (a GPU with bf16 autocast when there is one), cpu, cuda, ...")


def train_settings(args: argparse.Namespace) -> dict:
    """The flow's ``settings`` from the parsed options."""
    diversify = None if args.no_diversify else {
        "p_peak": args.p_peak, "p_patch": args.p_patch, "patch": args.patch_size,
        "alpha": args.alpha}
    images_root = str(Path(args.images_root).resolve()) if args.images_root else None
    return {"backbone": args.backbone, "pretrained": not args.no_pretrained, "loss": args.loss,
            "top_k": args.top_k, "diversify": diversify, "epochs": args.epochs, "lr": args.lr,
            "batch_size": args.batch_size, "crop_scale": args.crop_scale,
            "flip": not args.no_flip, "val_fraction": args.val_fraction, "seed": args.seed,
            "device": args.device, "format": args.format, "images_root": images_root}


def run_train(args: argparse.Namespace) -> int:
    """Run the train-classifier flow against one Prefect API; print where the model is."""
    from .cli import flush_prefect_logs
    from .server import prefect_api
    from .training_stage import TrainJob

    archive = str(Path(args.archive).resolve())
    if not Path(archive).exists():
        raise FileNotFoundError(f"archive not found: {args.archive}")
    settings = train_settings(args)
    TrainJob.from_settings(archive, args.out, settings)  # refuse bad settings before Prefect

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
