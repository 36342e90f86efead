"""The default run, whole command (issue 22, item 1): ``fidoflow demo`` (its 5 photos) or,
with ``--photos N``, ``fidoflow run`` of bench/endtoend.py's first N photos, at the old default
(``--samples 4``) against today's default, alternating on a quiet machine (bench/quiet.py).

    .venv/bin/python bench/demo_default.py [--photos N] [--repeats 3] [--force]
                                           [--baseline-path DIR] [-- extra options]

Each figure: the command's wall seconds, its start-up (the CLI's own line), and the shard work
the run folder records: explain (the predictions table's seconds) and analysis
(re-classification + evaluation), summed over images. Predicted: the explain work halves with
B; start-up and analysis do not depend on it. ``--baseline-path`` runs the old default from
other code: a folder holding a ``fidoflow`` package of an earlier commit (``git worktree add``,
then a ``fidoflow`` link to it), put first on PYTHONPATH for that side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.endtoend import timed, write_images
from bench.quiet import alternate, machine, medians

WORK = {"explain": ("predictions",), "analysis": ("reclassify", "metrics")}


def shard_work(run: Path) -> dict[str, float]:
    """Seconds of work per stage, from the run folder's own tables."""
    import pyarrow.dataset as ds

    return {stage: round(sum(float(ds.dataset(run / table, format="parquet")
                                   .to_table(columns=["seconds"])["seconds"].to_numpy().sum())
                             for table in tables), 1)
            for stage, tables in WORK.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="time even under load")
    parser.add_argument("--photos", type=int, default=0,
                        help="run N photos with `fidoflow run` instead of `fidoflow demo`")
    parser.add_argument("--baseline-path", help="a folder with an earlier fidoflow package, "
                        "for the old default's side")
    parser.add_argument("extra", nargs="*", help="options given to both sides (after --)")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10_000))
        source = (["run", str(write_images(Path(tmp) / "photos", args.photos))] if args.photos
                  else ["demo"])

        def demo(*options: str, path: str | None = None) -> dict:
            out = Path(tmp) / f"run-{next(runs)}" / "demo"
            env = dict(os.environ, PYTHONPATH=path) if path else None
            record = timed([sys.executable, "-m", "fidoflow.flows.cli", *source, "--out",
                            str(out), *options, *args.extra], env)
            return {**record, **shard_work(out)}

        results = alternate({"old default (B 4)": lambda: demo("--samples", "4",
                                                               path=args.baseline_path),
                             "default": demo}, args.repeats, args.force,
                            lambda r: print(json.dumps(r), flush=True))
    seconds = medians(results)
    print(json.dumps({"median_seconds": seconds,
                      "ratio": seconds["default"] / seconds["old default (B 4)"],
                      **{f"median_{k}": medians(results, k) for k in
                         ("startup_seconds", *WORK)}}))


if __name__ == "__main__":
    main()
