"""What a task notes about each output batch for its report: :class:`BatchObserver`.

The ``on_batch`` hook of :func:`.worker.score`: for every output batch it
adds the output columns' statistics (:mod:`.drift`), optionally the numeric
input columns', and a point of the task's timeline (seconds since the task
started, rows so far), to the task's ``stats`` dict, which becomes its
record. The timeline stays bounded: past :data:`TIMELINE_POINTS` points every
other one is dropped (the first and the newest are kept), so the driver can
still draw throughput over time from any task, long or short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from .drift import column_stats

TIMELINE_POINTS = 256  # per task, as the latency samples (see .report.sample)

logger = logging.getLogger("torchspark")


class BatchObserver:
    """``on_batch(input_batch, output_batch, seconds)`` for :func:`.worker.score`.

    Fills ``stats["output_stats"]`` (every column of the output batch but the
    ``keep`` ones), ``stats["input_stats"]`` (the ``inputs`` columns that are
    numbers or arrays of numbers; none by default) and ``stats["timeline"]``.
    Statistics never fail the task: if computing them raises, the task's
    statistics are dropped (none rather than a part) and a warning is logged.

    >>> import pyarrow as pa, time
    >>> from torchspark.spark.batch_observer import BatchObserver
    >>> stats = {"start": time.time(), "output_stats": {}, "input_stats": {}, "timeline": []}
    >>> observe = BatchObserver(keep=["id"], inputs=["x"], stats=stats)
    >>> observe(pa.record_batch({"id": [1, 2], "x": [0.5, 1.5]}),
    ...         pa.record_batch({"id": [1, 2], "score": [0.25, 0.75]}), 0.01)
    >>> sorted(stats["output_stats"]), stats["input_stats"]["x"].mean, stats["timeline"][-1][1]
    (['score'], 1.0, 2)
    """

    def __init__(self, keep: Sequence[str], inputs: Sequence[str], stats: dict[str, Any]) -> None:
        self.keep = set(keep)
        self.inputs = list(dict.fromkeys(inputs))
        self.stats = stats
        self.rows = 0
        self.broken = False

    def __call__(self, input_batch: Any, output_batch: Any, seconds: float) -> None:
        if not self.broken:
            try:
                self.add_statistics(input_batch, output_batch)
            except Exception as e:
                self.broken = True
                self.stats["output_stats"].clear()
                self.stats["input_stats"].clear()
                logger.warning(
                    "column statistics dropped for this task: %s: %s", type(e).__name__, e
                )
        self.rows += output_batch.num_rows
        timeline = self.stats["timeline"]
        timeline.append((time.time() - self.stats["start"], self.rows))
        if len(timeline) > TIMELINE_POINTS:
            newest = timeline[-1]
            del timeline[1::2]
            if timeline[-1] is not newest:
                timeline.append(newest)

    def add_statistics(self, input_batch: Any, output_batch: Any) -> None:
        outputs = self.stats["output_stats"]
        for name, column in zip(output_batch.schema.names, output_batch.columns, strict=True):
            if name not in self.keep:
                column_stats(column, outputs, name)
        if self.inputs:
            names = set(input_batch.schema.names)
            inputs = self.stats["input_stats"]
            for name in self.inputs:
                if name in names:
                    column_stats(input_batch.column(name), inputs, name)
