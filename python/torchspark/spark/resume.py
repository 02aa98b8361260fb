"""Resumable scoring jobs: :func:`predict_to` scores a DataFrame into Parquet, chunk by chunk.

A job that dies after hours (driver lost, cluster preempted) keeps what it
committed: the same call again scores only the chunks that did not commit.
A chunk is a range of the input's partitions (``chunk_partitions`` of them,
consecutive), scored and written by one Spark job that runs only those
partitions' tasks: a task scores its partition and writes the rows, in the
same Python worker, to one Parquet file in staging (:mod:`.chunk_writer`),
and the driver commits the chunk once its job succeeded (:mod:`.chunk_store`). The job's
identity (model digest, options, per-partition row counts and checksums of the
input) is in the output's manifest (:mod:`.job_identity`); a re-run that
differs in any of them refuses to resume, saying what changed.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from ..distribute import fetch, sha256_file
from ..errors import ResumeError
from .chunk_store import ChunkStore
from .chunk_writer import ChunkWriter
from .job_identity import (
    JobIdentity,
    differences,
    fingerprint,
    input_columns,
    recorded_options,
)
from .plan import plan_inputs
from .score import predict, score

_log = logging.getLogger("torchspark")


@dataclass(frozen=True)
class WriteResult:
    """What :func:`predict_to` did."""

    path: str  # the output (absolute when local)
    chunks: int  # chunks of the job
    skipped: list[int]  # chunks committed by earlier runs, not scored again
    written: list[int]  # chunks this call scored and committed
    rows: int  # rows in the output
    rows_written: int  # rows this call wrote


def predict_to(
    df: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    inputs: Any,
    resume: bool = True,
    chunk_partitions: int | None = None,
    input_key: str | None = None,
    **options: Any,
) -> WriteResult:
    """Score ``df`` (as :func:`torchspark.predict` does) into Parquet at ``path``,
    committing chunk by chunk, so that the same call after a crash writes only
    what is missing.

    The input's partitions are taken ``chunk_partitions`` at a time (default:
    ``sc.defaultParallelism``, one wave of tasks; a resumed job keeps the
    first run's), each chunk scored and written by a Spark job of its own and
    committed when that job succeeds: ``path`` then holds one
    ``part-<partition>.parquet`` per input partition of committed chunks, and
    ``_SUCCESS`` when all are. ``spark.read.parquet(path)`` never sees rows
    of a chunk that did not commit, and sees each committed row once.

    Args:
        df, model, inputs, and the keyword options (``output``, ``keep``,
            ``precision``, ``on_error``, engine options...): as for
            :func:`torchspark.predict`.
        path: the output folder: a local path (in local mode) or a URI of a
            file system every executor and the driver reach (``hdfs://``...);
            renames must be atomic there for a reader never to see a partly
            moved file (see :mod:`torchspark.spark.chunk_store`).
        resume: ``True`` (default): go on from what an earlier run of this
            job committed at ``path``. The model (its SHA-256), the options
            that change what is written, and the input (the row count and a
            checksum of the columns read, per partition; one Spark job over
            the input without the model, each run) must be those of the
            committed chunks: anything else raises :class:`ResumeError`
            naming what changed. ``False``: delete the earlier output at
            ``path`` and start over. Either way a ``path`` that holds
            something no ``predict_to`` wrote is left alone (an error).
        chunk_partitions: input partitions per chunk: fewer lose less work to
            a crash, more commit less often.
        input_key: your name for the input's version (e.g. a table snapshot
            id), recorded and compared as well.

    Returns a :class:`WriteResult`: the chunks skipped (committed before) and
    written by this call, rows in the output and written now.

    The input must read the same rows into the same partitions on each run:
    files or a table read the same way (Spark's split of files into
    partitions follows ``spark.sql.files.maxPartitionBytes`` and the default
    parallelism: keep them), or a ``repartition(n)`` of such. A
    non-deterministic input (``rand()``, a source that changes) is refused on
    resume, or fails the chunk whose row counts no longer match. Bad rows set
    aside with ``on_error="quarantine"`` and a ``quarantine`` folder may be
    written there again for chunks that are scored again.

    >>> out = os.path.join(tempfile.mkdtemp(), "scored")
    >>> result = torchspark.predict_to(df, path, out, inputs="x", keep=["id"])
    >>> result.rows, result.skipped
    (2, [])
    >>> spark.read.parquet(out).count()
    2
    >>> torchspark.predict_to(df, path, out, inputs="x", keep=["id"]).written  # all committed
    []
    """
    bound = inspect.signature(predict).bind(df, model, inputs=inputs, **options)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.update(arguments.pop("engine_options", {}))
    store = ChunkStore(path)
    foreign = store.foreign_entries()
    if foreign:
        raise ResumeError(
            f"predict_to at '{store.shown}': the path holds {foreign[:5]}, which no predict_to "
            "wrote (no _torchspark/manifest.json): write to a new path, or delete it yourself"
        )
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    # The tasks' summaries: scored and written by one function per task.
    written, planned = score(arguments, ChunkWriter(store.staging_uri(run)))
    summaries = written.rdd  # the JVM's rows, pickled; no Python stage of its own
    sc = df.sparkSession.sparkContext
    previous = store.manifest()

    # The identity of this call, with the first run's chunking when resuming.
    stored = JobIdentity.from_json(previous["identity"]) if previous and resume else None
    if chunk_partitions is None:
        chunk_partitions = stored.chunk_partitions if stored else max(1, sc.defaultParallelism)
    if chunk_partitions < 1:
        raise ValueError(f"chunk_partitions: expected at least 1, got {chunk_partitions}")
    used = [c for spec in plan_inputs(inputs)[0] for c in spec.column_list]
    keep = options.get("keep")
    count = summaries.getNumPartitions()
    schema, partitions = fingerprint(df, input_columns(df, keep, used), count)
    if len(partitions) != count:
        raise ResumeError(
            f"predict_to: the input has {count} partitions when scored but {len(partitions)} "
            "when checksummed: its partitioning is not stable (e.g. adaptive execution "
            "coalescing a shuffle); write it to files (or a table) first and score that"
        )
    identity = JobIdentity(
        model=planned.ref.sha256 or sha256_file(fetch(planned.ref)),
        model_name=planned.ref.name,
        options=recorded_options({k: v for k, v in arguments.items() if k not in ("df", "model")}),
        output_schema=planned.schema.simpleString(),
        input_schema=schema,
        input_key=input_key,
        chunk_partitions=chunk_partitions,
        partitions=partitions,
    )

    committed: dict[int, dict[str, Any]] = {}
    if stored is not None:
        changed = differences(stored, identity)
        committed = store.commits()
        if changed:
            raise ResumeError(
                f"predict_to at '{store.shown}': cannot resume: this call differs from the job "
                f"whose {len(committed)} chunk(s) are committed there:\n  - "
                + "\n  - ".join(changed)
                + "\nTo start over, pass resume=False (deletes what is at that path) or write "
                "to a new path."
            )
        for record in committed.values():
            if record["job"] != stored.digest:
                raise ResumeError(
                    f"predict_to at '{store.shown}': committed chunk {record['chunk']} belongs "
                    "to another job than the manifest: start over with resume=False or write "
                    "to a new path"
                )
            store.roll_forward(record)
        store.drop_staging()
    else:
        store.start({"identity": identity.to_json(), "created": time.time()})
    store.make_staging(run)

    chunks = _chunks(len(partitions), chunk_partitions)
    todo = [c for c in range(len(chunks)) if c not in committed]
    skipped = sorted(committed)
    if skipped:
        _log.info(
            "predict_to %s: %d of %d chunks committed before; scoring the other %d",
            store.shown,
            len(skipped),
            len(chunks),
            len(todo),
        )
    rows_written = 0
    for chunk in todo:
        what = f"torchspark predict_to {store.shown}: chunk {chunk + 1}/{len(chunks)}"
        sc.setJobDescription(what)
        try:
            tasks = [(r.partition, r.rows, r.file) for r in _run(summaries, chunks[chunk])]
        finally:
            sc.setJobDescription(None)
        _check_rows(tasks, chunks[chunk], chunk, identity, arguments["on_error"])
        record = store.commit(chunk, run, identity.digest, sorted(tasks))
        rows_written += sum(record["rows"])
        committed[chunk] = record
    store.finish()
    rows = sum(sum(r["rows"]) for r in committed.values())
    return WriteResult(store.uri, len(chunks), skipped, todo, rows, rows_written)


def _chunks(partitions: int, per_chunk: int) -> list[list[int]]:
    count = math.ceil(partitions / per_chunk)
    return [list(range(c * per_chunk, min((c + 1) * per_chunk, partitions))) for c in range(count)]


def _run(rdd: Any, partitions: list[int]) -> list[Any]:
    """The rows of ``partitions`` of ``rdd`` (a DataFrame's ``.rdd``), from one
    Spark job of those partitions' tasks only. ``SparkContext.runJob`` does
    this through a Python function over each partition, a Python stage (and
    worker) of its own per task; the JVM call it makes (``PythonRDD.runJob``)
    returns the DataFrame's pickled rows as they are."""
    from pyspark.util import _load_from_socket

    sc = rdd.context
    found = sc._jvm.PythonRDD.runJob(sc._jsc.sc(), rdd._jrdd, partitions)
    with _load_from_socket(found, rdd._jrdd_deserializer) as stream:
        return list(stream)


def _check_rows(
    summaries: list[tuple[int, int, str | None]],
    partitions: list[int],
    chunk: int,
    identity: JobIdentity,
    on_error: str,
) -> None:
    """Each partition of the chunk written once, with the rows the checksum
    job counted (fewer with on_error="quarantine": bad rows left out)."""
    got = sorted(p for p, _, _ in summaries)
    if got != partitions:
        raise ResumeError(
            f"predict_to: chunk {chunk}: expected one summary per partition {partitions}, got {got}"
        )
    for partition, rows, _ in summaries:
        expected = int(identity.partitions[partition][0])
        if rows != expected and not (on_error == "quarantine" and rows < expected):
            raise ResumeError(
                f"predict_to: chunk {chunk}, input partition {partition}: {expected} rows when "
                f"the input was checksummed, {rows} when it was scored: the input does not read "
                "the same rows twice (rand(), a source that changes, a shuffle whose partitions "
                "vary); write it to files (or a table) first and score that"
            )
