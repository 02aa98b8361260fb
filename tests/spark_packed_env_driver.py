"""The driver of tests/spark_packed_env_job.py, run by ``spark-submit`` with
the archive that ``python -m torchspark pack-env`` made (``--archives
env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``).

``spark-submit ... spark_packed_env_driver.py WORKDIR`` writes
``WORKDIR/driver.json``: what the executors' Python workers run (interpreter,
prefix, ``sys.path``, where torch, torchspark, pyarrow and pyspark come from)
and a ``torchspark.predict`` job scored on them, against eager PyTorch here.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROWS = 3000
PARTITIONS = 8
FEATURES = 6


def where(batches):
    """Per Python worker: what it runs and where its modules come from."""
    import os
    import sys

    import pyarrow as pa
    import pyspark
    import torch

    import torchspark

    for _ in batches:
        pass
    row = {
        "pid": os.getpid(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "cwd": os.getcwd(),
        "path": json.dumps(sys.path),
        "modules": json.dumps({m.__name__: m.__file__ for m in (torch, torchspark, pa, pyspark)}),
    }
    yield pa.RecordBatch.from_pylist([row])


def main(workdir: str) -> dict:
    import torch
    from pyspark.sql import SparkSession

    import torchspark

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    ).eval()
    path = torchspark.export(model, torch.randn(4, FEATURES), os.path.join(workdir, "mlp.pt"))
    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    result: dict = {"driver_executable": sys.executable, "driver_prefix": sys.prefix}
    deadline = time.time() + 120
    while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 and time.time() < deadline:
        time.sleep(0.5)
    result["executors"] = sc._jsc.sc().getExecutorMemoryStatus().size() - 1
    result["python_exec"] = sc.pythonExec

    schema = "pid long, executable string, prefix string, cwd string, path string, modules string"
    workers = spark.range(0, PARTITIONS, 1, PARTITIONS).mapInArrow(where, schema).collect()
    result["workers"] = [w.asDict() for w in workers]

    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id", f"transform(sequence(1, {FEATURES}), i -> cast(cos(id * i) as float)) AS x"
    )
    scored = torchspark.predict(df, path, inputs="x").toArrow().sort_by("id")
    source = df.toArrow().sort_by("id")
    with torch.no_grad():
        expected = model(torch.tensor(source.column("x").to_pylist()))
    got = torch.tensor(scored.column("prediction").to_pylist())
    result["ids"] = scored.column("id").to_pylist() == list(range(ROWS))
    result["max_abs_diff"] = float((got - expected).abs().max())
    result["task_pids"] = sorted({r["pid"] for r in torchspark.last_report().task_records})
    spark.stop()
    return result


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    out = main(workdir)
    with open(os.path.join(workdir, "driver.json"), "w") as f:
        json.dump(out, f, indent=1)
