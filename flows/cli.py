"""``fidoflow``: explain an archive of images (``run``) or the bundled photos (``demo``), or
train a classifier to explain (``train``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.device import resolve_device
from pipeline.images import DEFAULT_BOMB_PIXELS, DEFAULT_MAX_PIXELS

from .config import RunConfig, fido_methods
from .server import prefect_home


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pixel_count(text: str) -> int:
    """``40000000``, ``4e7``, ``40M``, ``40MP`` or ``1.5G`` pixels."""
    raw = text.strip().upper().removesuffix("P")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(raw[-1:], 1)
    try:
        value = int(float(raw[:-1] if scale != 1 else raw) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pixel count: {text!r} (e.g. 40M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fidoflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="explain every image of SOURCE into the run folder RUN")
    run.add_argument("source", metavar="SOURCE",
                     help="a folder (plain, ImageFolder, CUB-200-2011, or holding one COCO "
                          "camera-trap JSON or manifest.csv/.parquet), or a manifest "
                          "CSV/Parquet or COCO JSON file; see docs/manifest.md")
    add_archive_options(run)
    add_run_options(run, out_required=True)

    demo = commands.add_parser("demo", help="explain scikit-image's bundled photos, no data needed")
    add_run_options(demo, out_required=False)
    demo.set_defaults(shard_size=3)  # five photos: two shards keep both default workers busy

    from .train_cli import add_train_command  # fidoflow train: flows/train_cli.py
    add_train_command(commands)
    return parser


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.readers import FORMATS, SPLITS

    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="force a reader instead of detecting it from SOURCE")
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="keep the train or test rows only (CUB, manifests with a split)")
    parser.add_argument("--images-root", default=None, metavar="DIR",
                        help="where a COCO JSON's or manifest's image paths are relative to "
                             "(default: the file's folder)")
    parser.add_argument("--label-map", default=None, metavar="CSV",
                        help="CSV label_name,model_class mapping the archive's labels to the "
                             "model's classes (default: exact class-name match)")


def add_run_options(parser: argparse.ArgumentParser, out_required: bool) -> None:
    from pipeline.infill import INFILLS

    parser.add_argument("--out", required=out_required, default=None if out_required else "runs/demo",
                        metavar="RUN", help="run folder: a path or fsspec URL")
    parser.add_argument("--method", default="scd",
                        help="comma list of FIDO samplers: scd (default), cd")
    parser.add_argument("--samples", type=positive_int, help="samples B per image and step")
    parser.add_argument("--iterations", type=positive_int, help="optimisation steps")
    parser.add_argument("--mask-size", type=positive_int, help="mask side h = w")
    parser.add_argument("--infill", choices=sorted(INFILLS), help="what replaces dropped pixels")
    parser.add_argument("--stop-change", type=float, metavar="TOL",
                        help="stop an image early once its mask cells moved less than TOL on average "
                             "over 5 steps (its slot takes the next image); 0 never stops early")
    parser.add_argument("--shard-size", type=positive_int, default=16, help="images per task")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per optimisation step (default: 8 on a GPU, 1 on a CPU)")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="Dask worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="built-in (efficientnet-lite0, synthetic-cnn), a TorchScript file, "
                             "or a state_dict file with a model card")
    parser.add_argument("--model-card", default=None, metavar="YAML",
                        help="model card (YAML/JSON): architecture, classes, input size, "
                             "resize, mean/std (default: <model>.yaml beside the file)")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="allow a fully pickled model (unpickling runs code from the file)")
    parser.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS,
                        metavar="N", help="decoded images are shrunk under N pixels (default 40M)")
    parser.add_argument("--max-image-pixels", type=pixel_count, default=DEFAULT_BOMB_PIXELS,
                        metavar="N", help="images above N pixels are refused as decompression "
                                          "bombs (default ~179M, Pillow's limit)")
    parser.add_argument("--device", default="auto",
                        help="auto (a GPU when there is one), cpu, cuda, cuda:0, ...")
    parser.add_argument("--explain-only", action="store_true",
                        help="masks and predictions only: skip re-classification, metrics, report")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the classifier (GPU runs: slower start, faster steps)")
    parser.add_argument("--dask-address", default=None,
                        help="an existing Dask scheduler instead of a local cluster")


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def config_from(args: argparse.Namespace, source: str) -> RunConfig:
    from pipeline.models import BUILTINS

    methods = fido_methods(
        [m.strip() for m in args.method.split(",") if m.strip()],
        samples=args.samples, iterations=args.iterations, mask_size=args.mask_size,
        infill=args.infill, stop_change=args.stop_change,
    )
    model = args.model
    if model not in BUILTINS:
        if not Path(model).is_file():
            raise ValueError(f"unknown model {model!r}: neither a built-in "
                             f"({', '.join(BUILTINS)}) nor a model file")
        model = _absolute(model)
    for option in ("model_card", "label_map", "images_root"):
        value = getattr(args, option, None)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"--{option.replace('_', '-')} not found: {value}")
    return RunConfig(
        source=str(Path(source).resolve()), root=args.out, methods=methods, model=model,
        shard_size=args.shard_size, batch_size=args.batch_size, seed=args.seed,
        workers=args.workers, device=str(resolve_device(args.device)), compile=args.compile, analyse=not args.explain_only,
        format=getattr(args, "format", None), split=getattr(args, "split", "all"),
        images_root=_absolute(getattr(args, "images_root", None)),
        model_card=_absolute(args.model_card), trust_model_code=args.trust_model_code,
        label_map=_absolute(getattr(args, "label_map", None)),
        max_pixels=args.max_pixels, max_image_pixels=args.max_image_pixels,
    )


def report_lines(config: RunConfig) -> list[str]:
    """Warnings about refused rows and labels the model cannot score (never fatal)."""
    from .stages import manifest_report

    try:
        report = manifest_report(config)
    except Exception:  # noqa: BLE001 - a report must never fail a finished run
        return []
    lines = []
    if report["refused"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report["refused"].items()))
        lines.append(f"warning: {sum(report['refused'].values())} manifest rows refused "
                     f"before decoding ({kinds}); see errors/")
    if report["labelled"] and report["label_mode"] == "none":
        lines.append("warning: no label name matches a model class, so accuracy cannot be "
                     "computed; give --label-map")
    elif report["unmapped"]:
        names = ", ".join(f"{k} ({v})" for k, v in report["unmapped_names"].items())
        lines.append(f"warning: {report['unmapped']} labelled images have labels the model's "
                     f"classes do not cover (model_label empty): {names}")
    return lines


def execute(config: RunConfig, address: str | None) -> dict[str, int]:
    """Run the flow against one Prefect API (started here unless PREFECT_API_URL is set)."""
    from .server import prefect_api

    def import_flow() -> None:  # ~4 s of imports, overlapped with the server's boot
        from . import explain_archive  # noqa: F401

    with prefect_api(meanwhile=import_flow) as api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from .explain_archive import run_flow

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                return run_flow(config, address)
            finally:
                flush_prefect_logs()


def flush_prefect_logs() -> None:
    """Send buffered run logs before the run's API server stops."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prefect_home()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        if args.command == "train":  # flows/train_cli.py
            from .train_cli import run_train
            return run_train(args)
        if args.command == "demo":
            from .demo import prepare_demo_archive, print_demo_table

            source = prepare_demo_archive(Path(args.out).parent / "demo-archive")
        else:
            source = args.source
            if not Path(source).exists():
                parser.error(f"source folder not found: {source}")
        config = config_from(args, source)
        outcome = execute(config, args.dask_address)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"fidoflow: error: {exc}", file=sys.stderr)
        return 1
    if args.command == "demo":
        print_demo_table(config.root)
    print(f"{outcome['shards_run']} of {outcome['shards']} shards run, "
          f"{outcome['images_run']} images, {outcome['errors']} errors")
    if outcome.get("analysis_errors"):
        print(f"{outcome['analysis_errors']} images failed in re-classification or evaluation "
              "(errors/reclassify-part-*, errors/evaluate-part-*)")
    for line in report_lines(config):
        print(line)
    if args.command != "demo" and outcome.get("report"):
        print(f"report: {outcome['report']}")
    print(f"run folder: {config.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
