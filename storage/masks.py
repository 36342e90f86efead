"""The Zarr v3 mask store: per method instance a group of float16 (N, h, w) arrays (the maps
its kind returns: ``joint`` always, plus its own), labelled the way xarray reads them.

Layout: each array's chunks are one shard's rows (the unit of resume) and, when a task holds
several shards, the sharding codec stores a task's chunks in one object (a million images in a
thousand objects per map, not sixty thousand). A task owns its object, so concurrent writers
never share one (unaligned concurrent writes were measured to lose rows); the writer refuses
any region that is not a run of whole shards inside one task's object. Arrays carry
``dimension_names`` (image, y, x) and each group its ``image_id`` coordinate, so
``xarray.open_zarr(RUN/masks.zarr, group=METHOD)`` is a labelled dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import zarr

from .runfolder import SCHEMA_VERSION

DIMS = ("image", "y", "x")
CROPS = "crop_box"  # (N, 4): the square each row was explained on, in its file's pixels


class MisalignedRegion(ValueError):
    """A write that would share a Zarr chunk or storage object with another writer."""


IdPieces = Callable[[int], Iterable[tuple[int, Sequence[str]]]]  # from a row: (first row, ids)


def _ids(group: zarr.Group, n_images: int, chunk: int, image_ids: IdPieces) -> None:
    """The ``image_id`` coordinate of ``group`` at ``n_images`` rows, the rows it lacks written
    piece by piece (rows of no image keep the empty id)."""
    if "image_id" in group:
        ids = group["image_id"]
        have = ids.shape[0]
        if have >= n_images:
            return
        ids.resize((n_images,))
    else:
        ids = group.create_array("image_id", shape=(n_images,), dtype=str,
                                 chunks=(max(min(n_images, chunk), 1),),
                                 dimension_names=DIMS[:1])
        have = 0
    for start, piece in image_ids(have):
        values = np.asarray(list(piece), dtype=object)
        ids[start:start + len(values)] = values


def _rows(array: zarr.Array, n_images: int, what: str) -> None:
    """Grow ``array`` along ``image`` to ``n_images`` rows (an increment's new shards)."""
    if array.shape[0] > n_images:
        raise ValueError(f"{what} has {array.shape[0]} rows; the manifest needs {n_images}")
    if array.shape[0] < n_images:
        array.resize((n_images, *array.shape[1:]))


def create_store(
    url: str, n_images: int, shard_size: int, task_size: int, mask_size: int,
    methods: Mapping[str, dict], image_ids: IdPieces,
) -> zarr.Group:
    """Create, reopen or grow (an increment's new shards) the store for ``methods``: instance
    name -> its record (``kind``, ``config``, ``maps``: the names of the arrays it writes), at
    ``n_images`` mask rows. ``image_ids(first)`` yields (mask row, ids) pieces of the rows
    from ``first`` on."""
    root = zarr.open_group(url, mode="a")
    root.attrs.update({"schema_version": SCHEMA_VERSION,
                       "rows": "shard × shard_size + row within the shard (manifest order)",
                       "shard_size": shard_size, "task_size": task_size})
    ids_chunk = max(task_size, 65536)
    _ids(root, n_images, ids_chunk, image_ids)
    sharded = task_size > shard_size
    if CROPS in root:
        _rows(root[CROPS], n_images, f"{url}/{CROPS}")
    else:  # where each row's crop lies in its file (NaN: the whole picture)
        root.create_array(CROPS, shape=(n_images, 4), dtype="float32", chunks=(shard_size, 4),
                          shards=(task_size, 4) if sharded else None, fill_value=np.nan,
                          dimension_names=("image", "corner"),
                          attributes={"corners": ["x0", "y0", "x1", "y1"],
                                      "units": "pixels of the original file"})
    for method, params in methods.items():
        group = root.require_group(method)
        group.attrs.update({"method": method, "kind": params["kind"], "params": params["config"],
                            "maps": list(params["maps"])})
        _ids(group, n_images, ids_chunk, image_ids)
        for name in params["maps"]:
            if name in group:
                existing = group[name]
                if existing.shape[1:] != (mask_size, mask_size):
                    raise ValueError(f"{url}/{method}/{name} has shape {existing.shape}; "
                                     f"this run needs maps of {mask_size}²")
                _rows(existing, n_images, f"{url}/{method}/{name}")
                continue
            group.create_array(
                name, shape=(n_images, mask_size, mask_size), dtype="float16",
                chunks=(shard_size, mask_size, mask_size),
                shards=(task_size, mask_size, mask_size) if sharded else None,
                fill_value=np.nan, dimension_names=DIMS, attributes={"coordinates": "image_id"},
            )
    return root


def _whole_chunks(array: zarr.Array, start: int, values: np.ndarray) -> np.ndarray:
    """``values`` for rows from ``start``, padded with NaN to the end of their last chunk (or
    of the array): a shard shorter than its chunk (an increment's last) owns the rest of it."""
    chunk, stop = array.chunks[0], start + len(values)
    end = min(-(-stop // chunk) * chunk, array.shape[0])
    if stop >= end:
        return values
    pad = np.full((end - stop, *values.shape[1:]), np.nan, dtype=values.dtype)
    return np.concatenate([values, pad])


def _check_aligned(array: zarr.Array, start: int, stop: int, what: str) -> None:
    """Refuse rows [start, stop) of ``array`` unless they are whole chunks (shards) of one
    storage object (task), or end with the array's last rows."""
    chunk = array.chunks[0]
    outer = (array.shards or array.chunks)[0]
    end = array.shape[0]
    if (start % chunk or (stop % chunk and stop != end) or stop > end
            or (stop > start and start // outer != (stop - 1) // outer)):
        raise MisalignedRegion(
            f"rows [{start}, {stop}) of {what} are not whole chunks of {chunk} rows inside one "
            f"object of {outer} (array of {end}): two writers could share one")


def write_region(url: str, method: str, start: int, maps: Mapping[str, np.ndarray]) -> None:
    """Write rows [start, start + n) of each map of ``method`` (aligned: ``_check_aligned``)."""
    group = zarr.open_group(url, mode="r+")[method]
    for name, values in maps.items():
        array = group[name]
        values = _whole_chunks(array, start, values.astype(np.float16))
        _check_aligned(array, start, start + len(values), f"{method}/{name}")
        array[start:start + len(values)] = values


def write_crops(url: str, start: int, boxes: np.ndarray) -> None:
    """Rows [start, start + n) of the crop boxes (aligned as the maps are)."""
    array = zarr.open_group(url, mode="r+")[CROPS]
    boxes = _whole_chunks(array, start, boxes.astype(np.float32))
    _check_aligned(array, start, start + len(boxes), CROPS)
    array[start:start + len(boxes)] = boxes


def read_crops(url: str, rows: slice = slice(None)) -> np.ndarray:
    """(n, 4) crop boxes of ``rows`` (NaN rows: the whole picture)."""
    return zarr.open_group(url, mode="r")[CROPS][rows]


def read_maps(url: str, method: str, name: str = "joint", rows: slice = slice(None)) -> np.ndarray:
    return zarr.open_group(url, mode="r")[method][name][rows]


def map_names(url: str, method: str) -> tuple[str, ...]:
    """The maps stored for ``method``: ``joint`` first, then the method's own."""
    return tuple(zarr.open_group(url, mode="r")[method].attrs["maps"])
