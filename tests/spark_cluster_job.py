"""A torchspark job on ``local-cluster[2,1,1024]``, run by tests/test_spark.py in a subprocess.

Two Worker JVMs, each starting one executor JVM with one core: unlike
``local[N]``, executors do not share the driver's process, so the model has to
travel (``SparkContext.addFile``, a ``"sparkfile"`` reference) or be fetched from
a URI into ``$TORCHSPARK_CACHE``. One SparkContext per process, hence the
subprocess. ``pip install pyspark`` is enough (no separate Spark install).

Usage: ``python spark_cluster_job.py WORKDIR`` writes ``WORKDIR/result.json``
with what the test asserts on; logs go to stderr. Engine logs (and the
Python workers' stderr, where torchspark's per-task lines go) land under
``WORKDIR/spark_home/work``, read back here.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

PARTITIONS = 24
ROWS = 6000
FEATURES = 8


def main(workdir: str) -> dict:
    import torch

    import torchspark

    started = time.time()
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Flatten(0)
    )
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model_path = torchspark.export(
        model, torch.randn(4, FEATURES), os.path.join(workdir, "cluster_mlp.pt")
    )

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local-cluster[2,1,1024]")
        .appName("torchspark-cluster-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.memory", "512m")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.executorEnv.TORCHSPARK_LOG_LEVEL", "INFO")
        .config("spark.executorEnv.TORCHSPARK_CACHE", os.path.join(workdir, "cache"))
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    result: dict = {"master": sc.master, "rows": ROWS, "partitions": PARTITIONS, "timings": {}}

    def mark(step: str) -> None:
        result["timings"][step] = round(time.time() - started, 2)

    mark("session")

    # Wait for both executors to register, so tasks spread over the two JVMs.
    deadline = time.time() + 90
    while time.time() < deadline:
        executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        if executors >= 2:
            break
        time.sleep(0.5)
    result["executors"] = executors
    mark("executors")

    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * {FEATURES} + i) as float))"
        " as features",
    )

    # 1. The model shipped with addFile: the predictor's reference is a SparkFiles name.
    fn = torchspark.arrow_predictor(df, model_path, inputs="features")
    result["ref_kind"] = fn.ref.kind
    result["ref_location"] = fn.ref.location
    result["schema"] = fn.schema.simpleString()

    scored = torchspark.predict(df, model_path, inputs="features").cache()
    rows = scored.count()
    report = torchspark.last_report()
    result["count"] = rows
    result["report"] = {
        "rows": report.rows,
        "tasks": report.tasks,
        "partitions": sorted({r["partition"] for r in report.task_records}),
        "pids": sorted({r["pid"] for r in report.task_records}),
        "hosts": sorted({r["host"] for r in report.task_records}),
        "models": report.models,
        "errors": report.errors,
        "rows_per_partition": sorted(r["rows"] for r in report.task_records),
    }

    # 2. Where each executor's Python workers found the model (SparkFiles, in that
    # executor's own directory), and whether their worker-wide cache holds it. A
    # mapInArrow job, so it runs in the same reused Python workers as predict; run
    # right away, as Spark stops Python workers idle for a minute.
    name = fn.ref.location

    def where(batches: object) -> object:
        import os as _os

        import pyarrow as pa
        from pyspark import SparkFiles

        from torchspark.spark import worker

        for _ in batches:
            pass
        path = _os.path.abspath(SparkFiles.get(name))
        cached = any(key[0].location == name for key in worker._engines.held())
        yield pa.RecordBatch.from_pylist(
            [{"pid": _os.getpid(), "path": path, "exists": _os.path.isfile(path), "cached": cached}]
        )

    probes = [
        row.asDict()
        for row in df.mapInArrow(
            where, "pid long, path string, exists boolean, cached boolean"
        ).collect()
    ]
    result["probe_pids"] = sorted({p["pid"] for p in probes})
    result["probe_dirs"] = sorted({os.path.dirname(p["path"]) for p in probes})
    result["probe_all_exist"] = all(p["exists"] for p in probes)
    result["probe_pids_cached"] = sorted({p["pid"] for p in probes if p["cached"]})
    mark("probe")

    # 3. Exactly one row per id: counts and anti-joins both ways.
    result["distinct_ids"] = scored.select("id").distinct().count()
    result["missing_ids"] = df.join(scored, "id", "left_anti").count()
    result["extra_ids"] = scored.join(df, "id", "left_anti").count()

    # Predictions against eager torch on the driver, row by row by id.
    table = scored.toArrow().sort_by("id")
    source = df.toArrow().sort_by("id")
    x = torch.tensor(source.column("features").to_pylist(), dtype=torch.float32)
    with torch.no_grad():
        expected = model(x)
    got = torch.tensor(table.column("prediction").to_pylist(), dtype=torch.float32)
    result["ids_equal"] = table.column("id").to_pylist() == source.column("id").to_pylist()
    result["max_abs_diff"] = float((got - expected).abs().max())
    mark("predict")

    # 4. A file:// URI: each executor host downloads it once into $TORCHSPARK_CACHE.
    uri = "file://" + os.path.abspath(model_path)
    by_uri = torchspark.predict(df, uri, inputs="features", output="p2")
    joined = by_uri.join(scored, "id").agg(
        F.count("*"), F.max(F.abs(F.col("p2") - F.col("prediction")))
    )
    result["uri_rows"], result["uri_max_abs_diff"] = joined.first()
    result["cache_files"] = sorted(
        os.path.relpath(p, workdir) for p in glob.glob(os.path.join(workdir, "cache", "*", "*"))
    )
    mark("uri")

    # 5. Bad rows on two executors: a model that raises on some rows.
    result["bad_rows"] = bad_rows(spark, workdir)
    mark("bad_rows")

    # 6. Drift statistics from tasks on both executors, merged on the driver:
    # against numpy on the collected outputs and inputs, and compare() of a
    # second job on shifted inputs. Another model file, so that the per-task
    # log lines of step 1 stay apart (step 7; the same bytes would be shipped once).
    torch.manual_seed(1)
    drift_model = torchspark.export(
        torch.nn.Sequential(torch.nn.Linear(FEATURES, 1), torch.nn.Flatten(0)),
        torch.randn(4, FEATURES),
        os.path.join(workdir, "drift_linear.pt"),
    )
    stats_table = (
        torchspark.predict(df, drift_model, inputs="features", keep=["id"], input_stats=True)
        .toArrow()
        .sort_by("id")
    )
    reference = torchspark.last_report()
    shifted_df = df.selectExpr("id", "transform(features, v -> v * 3.0f + 1.0f) AS features")
    torchspark.predict(shifted_df, drift_model, inputs="features", keep=["id"]).write.format(
        "noop"
    ).mode("overwrite").save()
    comparison = torchspark.last_report().compare(reference)
    prediction = stats_table.column("prediction").to_numpy().astype("float64")
    features = source.column("features").combine_chunks().flatten().to_numpy().astype("float64")
    out, inp = reference.output_stats["prediction"], reference.input_stats["features"]
    result["drift"] = {
        "pids": sorted({r["pid"] for r in reference.task_records}),
        "output": [out.count, out.mean, out.std, out.min, out.max, out.quantile(0.9)],
        "numpy_output": [
            int(prediction.size),
            float(prediction.mean()),
            float(prediction.std()),
            float(prediction.min()),
            float(prediction.max()),
            float(sorted(prediction)[int(0.9 * (prediction.size - 1))]),
        ],
        "input": [inp.count, inp.mean, inp.std],
        "numpy_input": [int(features.size), float(features.mean()), float(features.std())],
        "input_columns": sorted(reference.input_stats),
        "psi": comparison.outputs["prediction"].psi,
        "self_psi": reference.compare(reference).outputs["prediction"].psi,
    }
    # The HTML report of a job whose tasks ran on both executors.
    with open(reference.save(os.path.join(workdir, "report.html"))) as f:
        page = f.read()
    result["html"] = {
        "images": page.count("src='data:image/png;base64,"),
        "rows": f"{ROWS:,}" in page,
        "hosts": sorted({f"{r['host']}" for r in reference.task_records}),
    }
    mark("drift")
    spark.stop()

    # 7. The per-task log lines, from the executors' stderr files.
    lines = []
    for path in glob.glob(os.path.join(workdir, "spark_home", "work", "app-*", "*", "stderr")):
        with open(path, errors="replace") as f:
            lines += [line.rstrip("\n") for line in f if line.startswith("torchspark: stage")]
    result["log_lines"] = lines
    mark("stopped")
    return result


def bad_rows(spark, workdir: str) -> dict:
    """``on_error="quarantine"`` (Parquet files) and ``"null"``: every id once,
    in the output or the quarantine, and the good rows' predictions equal to
    eager PyTorch."""
    import torch
    from pyspark.sql import functions as F

    import torchspark

    class Raises(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] > 1e5).any()):
                raise ValueError("x0 above the limit")
            return x[:, 0] * 2 + x[:, 1]

    path = os.path.join(workdir, "raises.pt")
    torch.jit.save(torch.jit.script(Raises()), path)
    bad_condition = "pmod(id, 97) = 5"
    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"array(cast(case when {bad_condition} then 1e6 else pmod(id, 11) end as float),"
        " cast(id * 0.5 as float)) as x",
    )
    bad = sorted(i for i in range(ROWS) if i % 97 == 5)
    where = os.path.join(workdir, "quarantine")
    scored = torchspark.predict(
        df, path, inputs="x", keep=["id"], on_error="quarantine", quarantine=where
    )
    table = scored.toArrow().sort_by("id")
    report = torchspark.last_report()
    aside = spark.read.parquet(where)
    both = scored.select("id").unionByName(aside.select("id"))
    ids = table.column("id").to_pylist()
    expected = {i: (i % 11) * 2 + i * 0.5 for i in range(ROWS) if i % 97 != 5}
    got = dict(zip(ids, table.column("prediction").to_pylist(), strict=True))
    nulled = torchspark.predict(df, path, inputs="x", keep=["id"], on_error="null")
    null_ids = sorted(r.id for r in nulled.where(F.col("prediction").isNull()).collect())
    return {
        "scored": len(ids),
        "quarantined": sorted(r.id for r in aside.select("id").collect()),
        "expected_bad": bad,
        "count": both.count(),
        "distinct": both.distinct().count(),
        "missing": df.join(both, "id", "left_anti").count(),
        "extra": both.join(df, "id", "left_anti").count(),
        "max_abs_diff": max(abs(got[i] - v) for i, v in expected.items()),
        "report_rows": report.rows,
        "report_bad_rows": report.bad_rows,
        "report_files": len(report.quarantine_files),
        "null_ids": null_ids,
        "hosts_pids": sorted({r["pid"] for r in report.task_records}),
    }


def spark_home(workdir: str) -> str:
    """A SPARK_HOME of links to pip's pyspark: a local-cluster Worker writes the
    executors' directories (and their stdout/stderr) to ``$SPARK_HOME/work``,
    which must not be inside the installed package."""
    from pyspark.find_spark_home import _find_spark_home

    real = _find_spark_home()
    home = os.path.join(workdir, "spark_home")
    os.makedirs(home, exist_ok=True)
    for entry in os.listdir(real):
        if entry != "work" and not os.path.exists(os.path.join(home, entry)):
            os.symlink(os.path.join(real, entry), os.path.join(home, entry))
    return home


def wait_for_executors(sc, count: int, timeout: float = 90.0) -> int:
    """Waits (up to ``timeout`` s) until ``count`` executors have registered
    with ``sc``; how many have (the driver's own entry not counted)."""
    status = sc._jsc.sc().getExecutorMemoryStatus
    deadline = time.time() + timeout
    while status().size() - 1 < count and time.time() < deadline:
        time.sleep(0.5)
    return status().size() - 1


def job_environment(workdir: str) -> None:
    """What a job script's driver (and the JVMs it starts) run with: the
    SPARK_HOME above, this interpreter for the workers, a cache in ``workdir``."""
    os.environ["SPARK_HOME"] = spark_home(workdir)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["TORCHSPARK_CACHE"] = os.path.join(workdir, "cache")


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    job_environment(workdir)
    os.environ["TORCHSPARK_LOG_LEVEL"] = "INFO"
    out = main(workdir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
