"""The task side of a resumable write: a task's scored rows to one Parquet file in staging.

:func:`~.resume.predict_to` gives :func:`.score.score` a :class:`ChunkWriter`
as its sink: the function ``mapInArrow`` runs is the writer around the
model's function (:class:`.worker.ArrowPredictor`), so scoring and writing
share one Python worker and the rows cross from the JVM once. A task writes
the scored Arrow batches, as they come, to
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
    """``mapInArrow`` function (once :meth:`around` a scoring function): writes
    the task's scored batches to ``staging`` (an absolute path or a
    ``pyarrow.fs`` URI every executor can write) and yields its summary."""

    output_schema = SUMMARY

    def __init__(self, staging: str, scoring: Any = None, schema: Any = None) -> None:
        self.staging = staging
        self.scoring = scoring  # Arrow batches in -> scored Arrow batches out
        # The Spark StructType written: its names replace those the batches
        # crossed under (predict's aliases), and partition 0 writes a file of
        # its columns when it has no rows, so that an output whose partitions
        # are all empty still has a schema to read.
        self.schema = schema

    def around(self, scoring: Any, schema: Any) -> ChunkWriter:
        """This writer, fed by ``scoring`` (batches -> scored batches), whose
        output columns ``schema`` describes."""
        return ChunkWriter(self.staging, scoring, schema)

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        task = TaskContext.get()
        partition = task.partitionId()
        fs, root = pafs.FileSystem.from_uri(self.staging)
        name = f"part-{partition:05d}-{task.taskAttemptId()}.parquet"
        names = self.schema.fieldNames()
        writer = None
        rows = 0
        try:
            for batch in self.scoring(batches):
                batch = pa.RecordBatch.from_arrays(batch.columns, names=names)
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
