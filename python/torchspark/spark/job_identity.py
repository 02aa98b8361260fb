"""What a resumable write is, so that a re-run can tell whether it may go on.

A :func:`~.resume.predict_to` job is its input, its model and its options; its
output's manifest records them as a :class:`JobIdentity`:

- the model: the SHA-256 of the model file (of its export for an ``nn.Module``);
- the options that change what is written: every argument of ``predict`` but
  those that change only speed or what is observed (:data:`SPEED_ONLY`), and
  the output schema the probe derived;
- the input: per input partition its row count and a checksum (the sum of
  Spark's ``xxhash64`` of each row's columns that the job reads), from one
  Spark job over the input without the model; the schema of those columns;
  the caller's ``input_key`` when given;
- the chunking: input partitions per chunk.

Per-partition checksums make a changed row, rows moved between partitions (a
different partitioning) or a non-deterministic input (``rand()``) show, with
the partitions named, whatever the input's source (files, a table, in-memory
rows): an input that changed under the same plan is caught, and an unchanged
one read through another plan is not refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# predict arguments that change how fast rows are scored or what the driver
# shows, not what is written: a resumed job may change them.
SPEED_ONLY = frozenset(
    {
        "batch_size",
        "device",
        "inflight",
        "input_stats",
        "intra_op_threads",
        "max_delay_ms",
        "max_tokens",
        "progress",
        "sha256",  # a check of the model file; the digest itself is recorded
        "share",  # where the engine runs: one per task or per executor
        "sort_window",
        "static_batch",
        "threads",
    }
)

# How many changed partitions a message lists before "...".
_SHOWN = 5


@dataclass(frozen=True)
class JobIdentity:
    model: str  # SHA-256 of the model file
    model_name: str  # its file name, for messages
    options: dict[str, str]  # argument -> repr, SPEED_ONLY ones left out
    output_schema: str  # simpleString of the written columns
    input_schema: str  # simpleString of the input columns the checksums cover
    input_key: str | None  # the caller's name for the input's version, if any
    chunk_partitions: int  # input partitions per chunk
    partitions: list[list[Any]]  # per input partition: [rows, checksum (a decimal string)]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobIdentity:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    @property
    def digest(self) -> str:
        """SHA-256 of the identity: each commit record carries it."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def rows(self) -> int:
        return sum(int(p[0]) for p in self.partitions)


def recorded_options(options: Mapping[str, Any]) -> dict[str, str]:
    """The arguments (defaults filled in) that change what is written, as reprs."""
    return {k: repr(v) for k, v in sorted(options.items()) if k not in SPEED_ONLY}


def input_columns(df: Any, keep: Sequence[str] | None, used: Sequence[str]) -> list[str]:
    """The columns of ``df`` that reach the output: the kept ones and the inputs."""
    kept = list(df.columns) if keep is None else list(keep)
    return list(dict.fromkeys([*kept, *used]))


def fingerprint(df: Any, columns: Sequence[str], partitions: int) -> tuple[str, list[list[Any]]]:
    """The schema of ``columns`` and, per partition of ``df`` (``partitions``
    of them, or more if this read of ``df`` had more), [rows, checksum]: one
    Spark job that reads ``columns`` (no model)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from .plan import quote

    def hashable(name: str) -> Any:
        column = F.col(quote(name))
        # xxhash64 takes no maps: their entries (an array of structs) instead.
        return F.map_entries(column) if isinstance(df.schema[name].dataType, T.MapType) else column

    schema = T.StructType([df.schema[c] for c in columns]).simpleString()
    hashed = df.select(
        F.spark_partition_id().alias("p"), F.xxhash64(*[hashable(c) for c in columns]).alias("h")
    )
    # A sum is blind to the order of rows in a partition (a shuffle does not
    # keep it); decimal(38, 0) holds 10^19 rows of 64-bit hashes.
    rows = hashed.groupBy("p").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.col("h").cast("decimal(38,0)")).alias("sum")
    )
    found = {r.p: [int(r.rows), str(r.sum)] for r in rows.collect()}
    seen = max(partitions, max(found, default=-1) + 1)
    return schema, [found.get(p, [0, "0"]) for p in range(seen)]


def differences(then: JobIdentity, now: JobIdentity) -> list[str]:
    """What differs between the committed job ``then`` and this call ``now``,
    one line each, saying what it was and what it is."""
    found = []
    if then.model != now.model:
        found.append(
            f"the model: sha256 {then.model[:16]}... ({then.model_name}) in the committed chunks, "
            f"{now.model[:16]}... ({now.model_name}) now"
        )
    for name in sorted(set(then.options) | set(now.options)):
        was, is_ = then.options.get(name, "(not given)"), now.options.get(name, "(not given)")
        if was != is_:
            found.append(f"option {name}: {was} then, {is_} now")
    if then.output_schema != now.output_schema:
        found.append(f"the output columns: {then.output_schema} then, {now.output_schema} now")
    if then.input_key != now.input_key:
        found.append(f"input_key: {then.input_key!r} then, {now.input_key!r} now")
    if then.input_schema != now.input_schema:
        found.append(f"the input columns: {then.input_schema} then, {now.input_schema} now")
    elif len(then.partitions) != len(now.partitions):
        found.append(
            f"the input's partitions: {len(then.partitions)} then ({then.rows} rows), "
            f"{len(now.partitions)} now ({now.rows} rows)"
        )
    else:
        pairs = enumerate(zip(then.partitions, now.partitions, strict=True))
        changed = [i for i, (a, b) in pairs if a != b]
        if changed:
            shown = ", ".join(
                f"{i} ({then.partitions[i][0]} rows then, {now.partitions[i][0]} now)"
                for i in changed[:_SHOWN]
            )
            more = f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
            found.append(
                f"the input's rows in {len(changed)} of {len(now.partitions)} partitions "
                f"(row count and checksum of the columns read): partitions {shown}{more}"
            )
    if then.chunk_partitions != now.chunk_partitions:
        found.append(f"chunk_partitions: {then.chunk_partitions} then, {now.chunk_partitions} now")
    return found
