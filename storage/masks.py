"""The Zarr v3 mask store: per method instance a group of float16 (N, h, w) arrays (the maps
its kind returns: ``joint`` always, plus its own), chunked by shard.

Each shard owns exactly one chunk along N, so concurrent writers never share a chunk (unaligned
concurrent writes were measured to lose rows); the writer refuses any region that breaks this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import zarr

from .runfolder import SCHEMA_VERSION


class MisalignedRegion(ValueError):
    """A write that would share a Zarr chunk with another shard."""


def create_store(
    url: str, n_images: int, shard_size: int, mask_size: int,
    methods: Mapping[str, dict], image_ids: Sequence[str],
) -> zarr.Group:
    """Create (or reopen, if it matches) the store for ``methods``: instance name -> its
    record (``kind``, ``config``, ``maps``: the names of the arrays it writes)."""
    root = zarr.open_group(url, mode="a")
    root.attrs.update({"schema_version": SCHEMA_VERSION, "rows": "manifest.parquet row order"})
    if "image_id" not in root:
        ids = root.create_array("image_id", shape=(n_images,), dtype=str, chunks=(max(n_images, 1),))
        ids[:] = np.asarray(image_ids, dtype=object)
    for method, params in methods.items():
        group = root.require_group(method)
        group.attrs.update({"method": method, "kind": params["kind"], "params": params["config"],
                            "maps": list(params["maps"])})
        for name in params["maps"]:
            if name in group:
                existing = group[name]
                if existing.shape != (n_images, mask_size, mask_size):
                    raise ValueError(f"{url}/{method}/{name} has shape {existing.shape}; "
                                     f"this run needs {(n_images, mask_size, mask_size)}")
                continue
            group.create_array(
                name, shape=(n_images, mask_size, mask_size), dtype="float16",
                chunks=(shard_size, mask_size, mask_size), fill_value=np.nan,
            )
    return root


def write_region(url: str, method: str, start: int, maps: Mapping[str, np.ndarray]) -> None:
    """Write rows [start, start + n) of each map of ``method``, refusing chunk-unaligned regions."""
    group = zarr.open_group(url, mode="r+")[method]
    for name, values in maps.items():
        array = group[name]
        stop = start + len(values)
        chunk = array.chunks[0]
        if start % chunk or (stop % chunk and stop != array.shape[0]) or stop > array.shape[0]:
            raise MisalignedRegion(
                f"rows [{start}, {stop}) of {method}/{name} do not align with chunks of {chunk} "
                f"rows (array of {array.shape[0]}): two writers could share a chunk"
            )
        array[start:stop] = values.astype(np.float16)


def read_maps(url: str, method: str, name: str = "joint", rows: slice = slice(None)) -> np.ndarray:
    return zarr.open_group(url, mode="r")[method][name][rows]


def map_names(url: str, method: str) -> tuple[str, ...]:
    """The maps stored for ``method``: ``joint`` first, then the method's own."""
    return tuple(zarr.open_group(url, mode="r")[method].attrs["maps"])
