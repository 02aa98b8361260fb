"""What the demo's tasks share: the Spark session, progress lines, timing, tables."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class TaskResult:
    """What one task measured: the figures of the final summary table."""

    task: str
    rows: int
    torchspark_s: float  # the Spark job (read, score, write Parquet), after warm-up
    baseline_s: float | None  # the same job with predict_batch_udf; None when skipped
    ok: bool  # every prediction matched the eager reference
    gain: str = ""  # one sentence: where the difference comes from

    @property
    def torchspark_rate(self) -> float:
        return self.rows / self.torchspark_s if self.torchspark_s > 0 else float("inf")

    @property
    def baseline_rate(self) -> float | None:
        if self.baseline_s is None:
            return None
        return self.rows / self.baseline_s if self.baseline_s > 0 else float("inf")


def spark_session(app: str) -> object:
    """A local SparkSession on every core whose Python workers run this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("TORCHSPARK_LOG_LEVEL", "WARNING")  # the summary says it all
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[*]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "true")
        .config("spark.sql.files.maxPartitionBytes", str(32 << 20))
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def step(message: str) -> None:
    print(message, flush=True)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the seconds it took."""
    elapsed = [0.0]
    t0 = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - t0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned, markdown-compatible table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _is_number(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "").rstrip("x").isdigit() or cell == "-"


def check_vectors(output_path: str, column: str, expected: Any) -> tuple[int, float]:
    """Rows of the Parquet output at ``output_path`` and the largest |difference|
    of its ``column`` (one array per row) from ``expected`` ([rows, D], by id)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = pq.read_table(output_path).sort_by("id")
    ids = out.column("id").to_numpy()
    if len(ids) != len(expected) or not np.array_equal(ids, np.arange(len(expected))):
        return len(ids), float("inf")
    if not len(ids):
        return 0, 0.0
    got = pc.list_flatten(out.column(column)).to_numpy().reshape(len(ids), -1)
    if got.shape != expected.shape:
        return len(ids), float("inf")
    return len(ids), float(np.abs(got - expected).max())
