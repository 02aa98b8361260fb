"""A torchspark job with live metrics on ``local-cluster[2,1,1024]``, run by
tests/test_metrics.py in a subprocess (one SparkContext per process).

Usage: ``python spark_metrics_job.py WORKDIR DRIVER_PORTS EXECUTOR_PORTS``.
Steps, each bounded in time, synchronised with the test through files in
WORKDIR: start the session (metrics on, the ports given, the executors'
metrics files under WORKDIR/metrics), make the scoring DataFrame (which starts
the driver's endpoint) and write ``endpoint.json``; wait for ``go`` (the test's
Prometheus is scraping); run the job; write ``result.json`` (the report and
its task records); wait for ``stop``; stop Spark.
"""

from __future__ import annotations

import json
import os
import sys
import time

from spark_cluster_job import spark_home, wait_for_executors

PARTITIONS = 12
ROWS = 24000
FEATURES = 8
WAIT_S = 240


def wait_for(path: str) -> None:
    deadline = time.time() + WAIT_S
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(f"no {path} after {WAIT_S} s")
        time.sleep(0.1)


def main(workdir: str, driver_ports: str, executor_ports: str) -> None:
    import torch

    import torchspark
    from torchspark.spark import monitor

    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )
    path = torchspark.export(model, torch.randn(4, FEATURES), os.path.join(workdir, "mlp.pt"))

    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local-cluster[2,1,1024]")
        .appName("torchspark-metrics-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.memory", "512m")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "250")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.executorEnv.TORCHSPARK_CACHE", os.path.join(workdir, "cache"))
        .config(monitor.ENABLED, "true")
        .config(monitor.DRIVER_PORTS, driver_ports)
        .config(monitor.PORTS, executor_ports)
        .config(monitor.DIRECTORY, os.path.join(workdir, "metrics"))
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    wait_for_executors(sc, 2)
    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * {FEATURES} + i) as float))"
        " as features",
    )
    scored = torchspark.predict(df, path, inputs="features", keep=["id"])
    endpoint = monitor.driver_monitor(sc).endpoint.address
    write(workdir, "endpoint.json", {"driver": endpoint, "application": sc.applicationId})
    wait_for(os.path.join(workdir, "go"))
    scored.write.format("noop").mode("overwrite").save()
    report = torchspark.last_report()
    write(
        workdir,
        "result.json",
        {
            "rows": report.rows,
            "p99_ms": report.p99_ms,
            "arrow_batches": report.arrow_batches,
            "latency_ms": [v for r in report.task_records for v in r["latency_ms"]],
            "executors": sc._jsc.sc().getExecutorMemoryStatus().size() - 1,
            "pids": sorted({r["pid"] for r in report.task_records}),
        },
    )
    wait_for(os.path.join(workdir, "stop"))
    spark.stop()


def write(workdir: str, name: str, value: dict) -> None:
    partial = os.path.join(workdir, f".{name}")
    with open(partial, "w") as f:
        json.dump(value, f)
    os.replace(partial, os.path.join(workdir, name))


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    os.environ["SPARK_HOME"] = spark_home(workdir)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    main(workdir, sys.argv[2], sys.argv[3])
