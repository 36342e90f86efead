"""The run folder: where each artefact of a run lives, on a local disk or any fsspec URL."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 3


@dataclass
class RunFolder:
    """Paths and atomic writes inside ``root`` (a path or URL such as ``s3://bucket/run``)."""

    root: str

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        self.fs, self.path = fsspec.core.url_to_fs(self.root)

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def local(self, *parts: str) -> str:
        """Path as the filesystem object sees it (no protocol)."""
        return "/".join([self.path, *parts])

    @property
    def masks_url(self) -> str:
        return self.url("masks.zarr")

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.local(*parts))

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.local(*parts), exist_ok=True)

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        """Write under a hidden temporary name, then rename: readers never see half a file."""
        *folder, name = parts
        self.makedirs(*folder)
        tmp = self.local(*folder, f".{name}.tmp")
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.fs.mv(tmp, self.local(*parts))

    def write_table(self, table: pa.Table, *parts: str) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.write_bytes_atomic(sink.getvalue(), *parts)

    def read_table(self, *parts: str, filters: list[tuple] | None = None) -> pa.Table:
        """A Parquet file, or only the row groups and rows matching ``filters`` (pyarrow's)."""
        with self.fs.open(self.local(*parts), "rb") as fh:
            return pq.read_table(fh, filters=filters)

    def write_json(self, obj: dict[str, Any], *parts: str) -> None:
        self.write_bytes_atomic(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def read_json(self, *parts: str) -> dict[str, Any]:
        with self.fs.open(self.local(*parts), "rb") as fh:
            return json.loads(fh.read())
