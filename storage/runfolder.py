"""The run folder: where each artefact of a run lives, on a local disk or any fsspec URL."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 5  # 5: increments (manifest and row tables carry the increment)


class StoreWriteFailed(RuntimeError):
    """A write to the run folder's object store that failed for good."""


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
        """Where zarr opens the mask store: a plain path on a local disk (zarr's own local
        store; ``file://`` URLs would go through fsspec's), the URL elsewhere."""
        return self.local("masks.zarr") if self.is_local else self.url("masks.zarr")

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.local(*parts))

    def remove(self, *parts: str) -> None:
        """Delete a file or a folder with what it holds (gone already is fine)."""
        if self.exists(*parts):
            self.fs.rm(self.local(*parts), recursive=True)

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.local(*parts), exist_ok=True)

    @property
    def is_local(self) -> bool:
        """A local disk (rename is atomic there), not an object store or memory."""
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    @contextlib.contextmanager
    def store_write(self, *parts: str) -> Iterator[None]:
        """An object store's write that fails after its client's own retries (fsspec's and
        botocore's) is said in one line naming the object; a whole-object write that failed
        published nothing."""
        try:
            yield
        except OSError as exc:
            raise StoreWriteFailed(f"the store did not take {self.url(*parts)} after its "
                                   f"retries ({exc.strerror or exc}); the shards finished "
                                   "so far are kept: rerun to resume") from exc

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        """Write so that readers never see half a file.

        On a local disk: a hidden temporary file, flushed, then renamed (removed again if the
        write fails, e.g. on a full disk). Elsewhere one whole-object write, which object stores
        publish atomically and which has no rename to lean on.
        """
        *folder, name = parts
        self.makedirs(*folder)
        if not self.is_local:
            with self.store_write(*parts), self.fs.open(self.local(*parts), "wb") as fh:
                fh.write(data)
            return
        tmp = self.local(*folder, f".{name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.local(*parts))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_table(self, table: pa.Table, *parts: str) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.write_bytes_atomic(sink.getvalue(), *parts)

    def write_batches(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema, *parts: str,
                      row_group_size: int | None = None) -> int:
        """Stream record batches into one Parquet file, ``row_group_size`` rows per row group,
        never holding the file in memory; as atomic as ``write_bytes_atomic`` (a hidden
        temporary file renamed on a local disk, one streamed object elsewhere). Returns the
        number of rows written."""
        *folder, name = parts
        self.makedirs(*folder)
        rows = 0

        def write(fh: Any) -> None:
            nonlocal rows
            with pq.ParquetWriter(fh, schema) as writer:
                for batch in batches:
                    if batch.schema != schema:  # the declared columns, in their order and types
                        batch = batch.select(schema.names).cast(schema)
                    writer.write_batch(batch, row_group_size=row_group_size)
                    rows += batch.num_rows

        if not self.is_local:
            with self.store_write(*parts), self.fs.open(self.local(*parts), "wb") as fh:
                write(fh)
            return rows
        tmp = self.local(*folder, f".{name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.local(*parts))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return rows

    def read_table(self, *parts: str, filters: list[tuple] | None = None,
                   columns: list[str] | None = None) -> pa.Table:
        """A Parquet file, or only the row groups and rows matching ``filters`` (pyarrow's),
        or only ``columns``."""
        with self.fs.open(self.local(*parts), "rb") as fh:
            return pq.read_table(fh, filters=filters, columns=columns)

    def row_count(self, *parts: str) -> int:
        """Rows of a Parquet file, from its footer."""
        with self.fs.open(self.local(*parts), "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    def write_torch(self, obj: object, *parts: str) -> None:
        """``torch.save`` of ``obj`` (tensors, state dicts, checkpoints), written atomically."""
        import torch

        sink = io.BytesIO()
        torch.save(obj, sink)
        self.write_bytes_atomic(sink.getvalue(), *parts)

    def read_torch(self, *parts: str) -> Any:
        """What ``write_torch`` wrote, on the CPU, tensors only (no pickled code)."""
        import torch

        with self.fs.open(self.local(*parts), "rb") as fh:
            return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)

    def write_json(self, obj: dict[str, Any], *parts: str) -> None:
        self.write_bytes_atomic(json.dumps(obj, indent=2, sort_keys=True).encode(), *parts)

    def read_json(self, *parts: str) -> dict[str, Any]:
        with self.fs.open(self.local(*parts), "rb") as fh:
            return json.loads(fh.read())
