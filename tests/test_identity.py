"""The same masks and tables as before the structure change (issue 21): a fixed run of every
method kind through every stage against the fingerprint written before the code moved
(tests/identity_run.py). Bit for bit where torch runs the same CPU kernels as when it was
written (the recorded CPU capability). On a CPU with other vector units, whose reductions round
differently, each map may differ by one float16 step (a stored value rounds the other way), and
a table value by 1e-5 of itself; the tables computed from the maps (re-classification, metrics,
summary), whose ranks and crops a one-step change can move further than that, are compared as
this code computes them from the reference's own maps."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tests.identity_run import REFERENCE, cpu_capability, fingerprint, identity_run

MOVED_TO_IMAGES = ("width", "height", "sha256")  # manifest columns the images table holds now
FROM_MAPS = ("reclassify", "metrics", "summary")  # tables the analysis stages compute from maps


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return fingerprint(identity_run(tmp_path_factory.mktemp("identity")))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(gzip.decompress(REFERENCE.read_bytes()))


@pytest.fixture(scope="module")
def from_reference_maps(tmp_path_factory: pytest.TempPathFactory, fresh: dict,
                        reference: dict) -> dict:
    """The fresh run's fingerprint, its analysis tables recomputed from the reference's maps
    when the maps differ (the same fingerprint when they do not)."""
    if fresh["maps"] == reference["maps"]:
        return fresh
    return fingerprint(identity_run(tmp_path_factory.mktemp("identity-maps"),
                                    reference["maps"]))


def null(value: object) -> object:
    """A missing value as None, whether pandas read it as None or NaN."""
    return None if value == "nan" else value


def without_added_columns(new: list[dict], old: list[dict]) -> list[dict]:
    """``new``'s rows less the columns added since the reference was written (issue 19's
    crops and parts), which must be null on this archive that has neither."""
    added = set().union(*new) - set().union(*old) if new and old else set()
    for row in new:
        assert all(null(row[c]) is None for c in added), {c: row[c] for c in added}
    return [{k: v for k, v in row.items() if k not in added} for row in new]


def as_float(value: object) -> object:
    if isinstance(value, str) and (value.startswith(("0x", "-0x")) or value in ("nan", "inf")):
        return float.fromhex(value) if value != "nan" else float("nan")
    if isinstance(value, list):
        return [as_float(v) for v in value]
    if isinstance(value, dict):
        return {k: as_float(v) for k, v in value.items()}
    return value


def close(a: object, b: object) -> bool:
    a, b = as_float(a), as_float(b)
    if isinstance(a, float) and isinstance(b, float):
        return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-5 * max(1.0, abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def test_every_map_is_the_one_stored_before(fresh: dict, reference: dict) -> None:
    assert fresh["maps"].keys() == reference["maps"].keys()
    exact = cpu_capability() == reference["cpu_capability"]
    for name, values in reference["maps"].items():
        new = np.array(fresh["maps"][name], dtype=np.uint16).view(np.float16)
        old = np.array(values, dtype=np.uint16).view(np.float16)
        if exact:
            assert np.array_equal(new.view(np.uint16), old.view(np.uint16)), name
        else:  # one float16 step of the value (it rounded the other way), or float32's
            # rounding at the map's scale (2^-16 of its largest value, values near 0)
            step = np.maximum(np.spacing(np.abs(old)), np.spacing(np.abs(new))).astype(float)
            scale = 2.0 ** -16 * float(np.nanmax(np.abs(old.astype(float)), initial=0.0))
            assert (np.abs(new.astype(float) - old.astype(float)) <= step + scale).all(), name


@pytest.mark.parametrize("table", ["manifest", "predictions", "sag", "reclassify", "metrics",
                                   "summary"])
def test_every_table_row_is_the_one_written_before(fresh: dict, from_reference_maps: dict,
                                                   reference: dict, table: str) -> None:
    source = from_reference_maps if table in FROM_MAPS else fresh
    old, new = reference["tables"][table], source["tables"][table]
    if table == "manifest":  # the worker that reads a file records these now (issue 18); the
        # manifest is streamed from Arrow, so pandas reads its empty text as NaN, not None
        old = [{k: null(v) for k, v in row.items() if k not in MOVED_TO_IMAGES} for row in old]
        new = [{k: null(v) for k, v in row.items()} for row in new]
    if table == "summary":  # the per-increment rows came after the reference
        new = [row for row in new if row["group_by"] != "increment"]
    assert len(new) == len(old)
    new = without_added_columns(new, old)
    if cpu_capability() == reference["cpu_capability"]:
        assert new == old
    else:
        assert all(close(a, b) for a, b in zip(new, old, strict=True))
