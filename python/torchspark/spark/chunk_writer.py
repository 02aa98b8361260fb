"""The task side of a resumable write: a task's scored rows to one Parquet file in staging.

:func:`~.resume.predict_to` hands a :class:`ChunkWriter` to ``mapInArrow``
after the model. A task writes the Arrow batches it receives, as they come, to
``<staging>/part-<partition>-<task attempt id>.parquet`` and yields one
summary row (partition, rows, file name). The name is unique per attempt, so a
retried or speculative attempt never writes over another's file; the driver
commits only the files of the attempts Spark reports as successful
(:mod:`.chunk_store`). Nothing here is visible to readers of the output:
staging is under ``_torchspark``, which Spark's file listing skips (a name
that starts with ``_``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# What each task yields: one row.
SUMMARY = "partition int, rows long, file string"


class ChunkWriter:
    """``mapInArrow`` function: writes the task's batches to ``staging`` (an
    absolute path or a ``pyarrow.fs`` URI every executor can write) and yields
    its summary. ``schema`` (the Spark StructType written) gives the columns of
    the file partition 0 writes when it has no rows, so that an output whose
    partitions are all empty still has a schema to read."""

    def __init__(self, staging: str, schema: Any) -> None:
        self.staging = staging
        self.schema = schema

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        task = TaskContext.get()
        partition = task.partitionId()
        fs, root = pafs.FileSystem.from_uri(self.staging)
        name = f"part-{partition:05d}-{task.taskAttemptId()}.parquet"
        writer = None
        rows = 0
        try:
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(f"{root}/{name}", batch.schema, filesystem=fs)
                if batch.num_rows:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            if writer is None and partition == 0:
                from pyspark.sql.pandas.types import to_arrow_schema

                schema = to_arrow_schema(self.schema)
                writer = pq.ParquetWriter(f"{root}/{name}", schema, filesystem=fs)
        finally:
            if writer is not None:
                writer.close()
        summary = pa.schema(
            [("partition", pa.int32()), ("rows", pa.int64()), ("file", pa.string())]
        )
        row = {"partition": partition, "rows": rows, "file": name if writer is not None else None}
        yield pa.RecordBatch.from_pylist([row], schema=summary)
