"""The mask store: a task's chunks in one Zarr object, writes refused when two writers could
share a chunk or an object, and labelled arrays xarray opens by their dimensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from fidoflow.storage import masks

METHODS = {"scd": {"kind": "scd", "config": {"samples": 2}, "maps": ("joint", "ssr")}}
IDS = [f"img-{i}" for i in range(10)]


def store(tmp_path: Path, shard: int = 2, task: int = 4) -> str:
    url = str(tmp_path / "masks.zarr")
    masks.create_store(url, 10, shard, task, 4, METHODS, lambda first: [(0, IDS[:6]), (6, IDS[6:])])
    return url


def test_a_task_is_one_object_of_shard_sized_chunks(tmp_path: Path) -> None:
    url = store(tmp_path)
    array = zarr.open_group(url, mode="r")["scd"]["joint"]
    assert (array.chunks, array.shards) == ((2, 4, 4), (4, 4, 4))
    for start in (0, 2, 4, 6, 8):  # every task's shards, one after the other
        masks.write_region(url, "scd", start, {"joint": np.full((2, 4, 4), start / 10)})
    objects = sorted(p.name for p in (tmp_path / "masks.zarr" / "scd" / "joint" / "c").iterdir())
    assert objects == ["0", "1", "2"]  # three tasks: three objects, not five chunk files
    np.testing.assert_allclose(masks.read_maps(url, "scd")[:, 0, 0],
                               np.repeat([0, 0.2, 0.4, 0.6, 0.8], 2), atol=1e-3)


@pytest.mark.parametrize(("start", "rows"), [(1, 2), (2, 3), (3, 2)])
def test_writes_that_could_share_a_chunk_or_an_object_are_refused(tmp_path: Path, start: int,
                                                                  rows: int) -> None:
    url = store(tmp_path)
    with pytest.raises(masks.MisalignedRegion, match="two writers could share"):
        masks.write_region(url, "scd", start, {"joint": np.zeros((rows, 4, 4))})


def test_the_last_short_shard_is_allowed(tmp_path: Path) -> None:
    url = str(tmp_path / "masks.zarr")
    masks.create_store(url, 10, 4, 8, 4, METHODS, lambda first: [(0, IDS)])
    masks.write_region(url, "scd", 8, {"joint": np.ones((2, 4, 4))})
    assert not np.isnan(masks.read_maps(url, "scd")[8:]).any()


def test_xarray_opens_a_method_as_labelled_maps(tmp_path: Path) -> None:
    url = store(tmp_path)
    masks.write_region(url, "scd", 4, {"joint": np.ones((4, 4, 4)), "ssr": np.ones((4, 4, 4))})
    maps = xr.open_zarr(url, group="scd", consolidated=False)
    assert set(maps.data_vars) == {"joint", "ssr"}
    assert maps.joint.dims == ("image", "y", "x") and maps.joint.shape == (10, 4, 4)
    assert list(maps.image_id.values) == IDS
    one = maps.joint.set_xindex("image_id").sel(image_id="img-5")
    assert float(one.mean()) == 1.0
    assert maps.attrs["kind"] == "scd" and maps.attrs["maps"] == ["joint", "ssr"]


def test_a_store_of_one_shard_per_task_needs_no_sharding(tmp_path: Path) -> None:
    url = store(tmp_path, shard=2, task=2)
    array = zarr.open_group(url, mode="r")["scd"]["joint"]
    assert array.shards is None and array.chunks == (2, 4, 4)
