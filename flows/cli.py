"""``fidoflow``: explain a folder of images (``run``) or the bundled photos (``demo``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import RunConfig, fido_methods
from .server import prefect_home


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fidoflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="explain every image below SOURCE into the run folder RUN")
    run.add_argument("source", metavar="SOURCE", help="folder of images (searched recursively)")
    add_run_options(run, out_required=True)

    demo = commands.add_parser("demo", help="explain scikit-image's bundled photos, no data needed")
    add_run_options(demo, out_required=False)
    return parser


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
    parser.add_argument("--shard-size", type=positive_int, default=16, help="images per task")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per optimisation step")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="Dask worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--dask-address", default=None,
                        help="an existing Dask scheduler instead of a local cluster")


def config_from(args: argparse.Namespace, source: str) -> RunConfig:
    methods = fido_methods(
        [m.strip() for m in args.method.split(",") if m.strip()],
        samples=args.samples, iterations=args.iterations, mask_size=args.mask_size,
        infill=args.infill,
    )
    return RunConfig(
        source=str(Path(source).resolve()), root=args.out, methods=methods, model=args.model,
        shard_size=args.shard_size, batch_size=args.batch_size, seed=args.seed,
        workers=args.workers, device=args.device,
    )


def execute(config: RunConfig, address: str | None) -> dict[str, int]:
    """Run the flow against one Prefect API (started here unless PREFECT_API_URL is set)."""
    from .server import prefect_api

    with prefect_api() as api_url:
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
        if args.command == "demo":
            from .demo import prepare_demo_archive, print_demo_table

            source = prepare_demo_archive(Path(args.out).parent / "demo-archive")
        else:
            source = args.source
            if not Path(source).is_dir():
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
    print(f"run folder: {config.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
