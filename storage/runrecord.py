"""``run.json``: what decides a run's results, written by its first run and compared by every
rerun, so that a rerun into the same folder resumes only with the same settings."""

from __future__ import annotations

import json

from .runfolder import SCHEMA_VERSION, RunFolder

RECORD = "run.json"


class RunMismatch(RuntimeError):
    """The folder already holds a run made with other settings."""


def normalised(record: dict) -> dict:
    """JSON round trip, so a fresh config compares equal to the one read from run.json."""
    return json.loads(json.dumps(record, sort_keys=True))


def recorded(run: RunFolder) -> dict | None:
    """The folder's run.json, None when there is none; refuses another table schema."""
    if not run.exists(RECORD):
        return None
    record = run.read_json(RECORD)
    if record.get("schema_version") != SCHEMA_VERSION:
        raise RunMismatch(f"{run.root} was written with table schema "
                          f"{record.get('schema_version')}, this fidoflow writes "
                          f"{SCHEMA_VERSION}; use another --out")
    return record


def check_same(run: RunFolder, record: dict, identity: dict) -> None:
    """Refuse a rerun whose results-deciding settings differ from the recorded ones."""
    if record["config"] != normalised(identity):
        raise RunMismatch(f"{run.root} holds a run with other settings; "
                          "use another --out or the same options")


def record_analysis(run: RunFolder, analysis: dict) -> None:
    """Write the analysis settings into run.json on the first analysing run; refuse a later run
    with other ones, whose parts would mix with the done shards' (explain-only runs record
    nothing)."""
    record = run.read_json(RECORD)
    wanted = normalised(analysis)
    if "analysis" not in record:
        run.write_json({**record, "analysis": wanted}, RECORD)
    elif record["analysis"] != wanted:
        raise RunMismatch(f"{run.root} was analysed with other analysis settings; "
                          "use another --out or the same settings")
