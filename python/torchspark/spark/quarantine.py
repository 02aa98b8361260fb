"""Where ``on_error="quarantine"`` sets bad rows aside: Parquet files, or the driver.

With ``quarantine=<directory>`` (a local path or a URI that ``pyarrow.fs``
opens: ``s3://``, ``hdfs://``, ``gs://``, ``file://``) each task that set rows
aside writes them, with their error, to one Parquet file named by its
partition and the run (``part-00007-<run>.parquet``), written to a temporary
name and renamed once complete. A retried or speculative attempt of the same
partition writes the same rows under the same name, so the directory holds
each bad row once. Without a directory, the rows travel to the driver with the
task's record (Arrow IPC, at most ``MAX_RECORD_BYTES`` per task: more fails
the task with a message asking for a directory) and
``last_report().quarantined()`` makes them a DataFrame.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from typing import Any

MAX_RECORD_BYTES = 64 << 20


def file_name(partition: int, run: str | None) -> str:
    return f"part-{max(partition, 0):05d}-{run or 'local'}.parquet"


def write_parquet(directory: str, name: str, batches: Sequence[Any]) -> str:
    """Writes ``batches`` as ``directory/name`` (atomically: a temporary name,
    then a rename); returns the file's location."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = pafs.FileSystem.from_uri(_as_uri(directory))
    fs.create_dir(root, recursive=True)
    final = f"{root.rstrip('/')}/{name}"
    temporary = f"{root.rstrip('/')}/.{name}.{uuid.uuid4().hex}.tmp"
    table = pa.Table.from_batches(list(batches))
    try:
        with fs.open_output_stream(temporary) as stream:
            pq.write_table(table, stream)
        fs.move(temporary, final)
    except BaseException:
        with contextlib.suppress(Exception):  # the write's own error matters, not the clean-up's
            fs.delete_file(temporary)
        raise
    return final


def to_bytes(batches: Sequence[Any], where: str) -> bytes:
    """``batches`` as Arrow IPC stream bytes for the task's record."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    if len(data) > MAX_RECORD_BYTES:
        from ..errors import BadRowsError

        raise BadRowsError(
            f"{where}: the rows set aside take {len(data) / 2**20:.1f} MiB, more than the "
            f"{MAX_RECORD_BYTES >> 20} MiB a task sends to the driver; pass quarantine=<a "
            "directory> (local path or URI) to write them as Parquet instead"
        )
    return data


def from_bytes(blobs: Sequence[bytes]) -> Any:
    """The rows of several tasks' IPC bytes as one table (None if none)."""
    import pyarrow as pa

    tables = [pa.ipc.open_stream(blob).read_all() for blob in blobs]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def _as_uri(directory: str) -> str:
    if "://" in directory:
        return directory
    return "file://" + os.path.abspath(directory)
