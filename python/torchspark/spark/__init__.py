"""Scoring Spark DataFrames: ``predict``, ``arrow_predictor``, ``torch_udf``, ``last_report``.

Everything runs through Spark's Arrow paths (``mapInArrow``, ``arrow_udf``):
each Arrow batch Spark streams into a Python worker is handed, zero-copy, to
the native :class:`torchspark.Engine`, which converts, batches and runs the
model in C++ threads while the worker reads the next batch, so a task costs
about max(IPC, compute) rather than their sum. The model is loaded once per
Python worker and reused across tasks; each task binds to its GPU (from
``TaskContext.resources()``) or the CPU, and sizes torch's intra-op threads
from ``spark.task.cpus``.

One concept per module, by side: :mod:`.plan` (driver: inputs, column checks,
the probe batch, the schema), :mod:`.packing` (JVM-side packing of gathered
columns), :mod:`.score` (``predict``, ``arrow_predictor``), :mod:`.udf`
(``torch_udf``), :mod:`.worker` (the function pickled to the executors),
:mod:`.outputs` (model outputs -> columns), :mod:`.types` (the torch <-> Spark
type table), :mod:`.report` (per-task records, ``Report``, ``last_report``),
:mod:`.batch_observer` (what a task notes per output batch), :mod:`.sketch`
(the quantile sketch), :mod:`.drift` (column statistics, ``Report.compare``),
:mod:`.report_html` (``Report.save``), :mod:`.doctor` (``doctor``: settings
recommended from measurements, with :mod:`.cluster_conf` and :mod:`.recommend`);
resumable writes: :mod:`.resume` (``predict_to``), :mod:`.job_identity` (what a
re-run must match), :mod:`.chunk_writer` (the task side), :mod:`.chunk_store`
(the output folder and its commits).

Errors that can be found before the job starts are raised on the driver:
missing columns, column types the model cannot take, a model that does not
load or run on a probe batch, an output schema that does not match.

The examples in this package's docstrings run as written (the test suite runs
them against a local SparkSession); they share ``spark``, ``path`` and ``df``:

>>> import os, tempfile, torch, torchspark
>>> from pyspark.sql import SparkSession
>>> spark = SparkSession.builder.master("local[2]").getOrCreate()
>>> path = torchspark.export(torch.nn.Linear(3, 1), torch.randn(4, 3),
...                          os.path.join(tempfile.mkdtemp(), "model.pt"))
>>> df = spark.createDataFrame([(1, [1.0, 2.0, 3.0]), (2, [0.5, 0.5, 0.5])],
...                            "id long, x array<float>")
>>> scored = torchspark.predict(df, path, inputs="x")
>>> scored.columns
['id', 'x', 'prediction']
>>> scored.count()
2
"""

from __future__ import annotations

from .doctor import doctor
from .report import Report, last_report
from .resume import WriteResult, predict_to
from .score import arrow_predictor, predict
from .udf import torch_udf
from .worker import ArrowPredictor

__all__ = [
    "ArrowPredictor",
    "Report",
    "WriteResult",
    "arrow_predictor",
    "doctor",
    "last_report",
    "predict",
    "predict_to",
    "torch_udf",
]
