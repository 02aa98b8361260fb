"""A SparkSession whose Python workers run an interpreter without torchspark.

Run by tests/test_spark.py in a subprocess (the workers' Python is fixed when
the SparkContext starts, one per process): ``python spark_bare_python_job.py
PYTHON WORKDIR`` starts ``local[1]`` with ``PYSPARK_PYTHON=PYTHON``, calls
``torchspark.predict`` and writes ``WORKDIR/result.json``: the error it raised
(before any job of its own) and how long that took.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(python: str, workdir: str) -> dict:
    import torch

    import torchspark

    path = torchspark.export(torch.nn.Linear(3, 1), torch.randn(4, 3), f"{workdir}/m.pt")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("torchspark-bare-python")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("OFF")
    result: dict = {"python": python}
    try:
        df = spark.createDataFrame([(1, [1.0, 2.0, 3.0])], "id long, x array<float>")
        started = time.time()
        try:
            torchspark.predict(df, path, inputs="x")
            result["error"] = None
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
        result["seconds"] = round(time.time() - started, 2)
        # Jobs that ran: the check's single task only (no probe batch, no predict job).
        tracker = spark.sparkContext.statusTracker()
        jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(None)]
        result["tasks"] = sum(
            tracker.getStageInfo(s).numTasks for job in jobs for s in job.stageIds
        )
    finally:
        spark.stop()
    return result


if __name__ == "__main__":
    python, workdir = sys.argv[1], os.path.abspath(sys.argv[2])
    os.environ["PYSPARK_PYTHON"] = python
    out = main(python, workdir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
