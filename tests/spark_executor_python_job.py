"""SparkSessions whose Python workers run another interpreter than the driver's.

Run by tests/test_environment.py in a subprocess (the workers' Python is read
from ``PYSPARK_PYTHON`` when a SparkContext starts): ``python
spark_executor_python_job.py WORKDIR PYTHON...`` starts ``local[1]`` once per
PYTHON with ``PYSPARK_PYTHON=PYTHON``, calls ``torchspark.predict`` and writes
``WORKDIR/result.json``: per PYTHON, the error it raised (before any job of its
own), how long that took and how many tasks ran.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(workdir: str, pythons: list[str]) -> list[dict]:
    import torch

    import torchspark

    path = torchspark.export(torch.nn.Linear(3, 1), torch.randn(4, 3), f"{workdir}/m.pt")
    from pyspark.sql import SparkSession

    results = []
    for python in pythons:
        os.environ["PYSPARK_PYTHON"] = python
        spark = (
            SparkSession.builder.master("local[1]")
            .appName("torchspark-executor-python")
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
        results.append(result)
    return results


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    out = main(workdir, sys.argv[2:])
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
