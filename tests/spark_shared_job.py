"""``share="executor"`` on ``local-cluster[2,2,2048]``, run by tests/test_shared_engine.py.

Two executors with two task slots each, many partitions:

1. ``predict(..., share="executor")``: the model loads once per executor (the
   engines' ``loads.jsonl``), every id comes back once with predictions equal
   to eager PyTorch, and model calls mixed rows of different tasks: the model's
   second output is its batch's spread of the partition tag (max - min), > 0
   only in a batch holding rows of two partitions.
2. A job cancelled mid-way (``sc.cancelAllJobs()``): the next job runs on
   the same engines (no crash, no new load), every id once, same predictions.
3. A task kills its executor's engine (SIGKILL) after its first output batch:
   the tasks in flight there fail and are retried on a fresh engine; the job
   ends with every id once and the same predictions.
4. A task kills its own Python worker (SIGKILL) while it waits on the engine:
   retried, same checks.

After ``spark.stop()`` the executors' JVMs exit, their engines with them:
no socket is left, and ``/dev/shm`` holds nothing new.

Usage: ``python spark_shared_job.py WORKDIR`` writes ``WORKDIR/result.json``.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import threading
import time

from spark_cluster_job import job_environment, wait_for_executors

PARTITIONS = 24
ROWS = 24000
FEATURES = 8


def model_file(workdir: str) -> str:
    import torch

    class Tagged(torch.nn.Module):
        """(an MLP of x, the spread of ``tag`` over the batch)."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
            )

        def forward(self, x: torch.Tensor, tag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            spread = (tag.max() - tag.min()).expand(x.shape[0])
            return self.net(x).squeeze(1), spread

    path = os.path.join(workdir, "tagged.pt")
    torch.jit.save(torch.jit.script(Tagged()), path)
    return path


def checked(scored, source, reference) -> dict:
    """Every id once and the predictions against eager, from one collect:
    count, distinct count, and the ids missing and extra (the two anti-joins,
    as set differences against the source's ids on the driver)."""
    import numpy as np

    table = scored.toArrow().sort_by("id")
    ids = table.column("id").to_pylist()
    expected = set(source.column("id").to_pylist())
    got = table.column("prediction_0").to_numpy()
    return {
        "count": len(ids),
        "distinct": len(set(ids)),
        "missing": len(expected - set(ids)),
        "extra": len(set(ids) - expected),
        "ids_equal": ids == source.column("id").to_pylist(),
        "max_abs_diff": float(np.abs(got - reference).max()) if len(ids) == len(reference) else -1,
        "mixed_rows": int((table.column("prediction_1").to_numpy() > 0).sum()),
    }


def loads(shared: str) -> list[dict]:
    """Every model load of the engines under ``shared`` (``$TORCHSPARK_SHARED_DIR``):
    the ``loads.jsonl`` lines, each with the ``directory`` it is in."""
    found = []
    for path in glob.glob(os.path.join(shared, "*", "*", "loads.jsonl")):
        with open(path) as f:
            found += [{**json.loads(line), "directory": os.path.dirname(path)} for line in f]
    return found


def killing(predictor, partition: int, what: str):
    """``predictor`` for mapInArrow, but partition ``partition``'s first
    attempt SIGKILLs ``what`` ("engine": its executor's engine; "worker":
    itself, from a thread, while the task waits on the engine) after its first
    output batch."""

    def run(batches):
        from pyspark import TaskContext

        task = TaskContext.get()
        armed = task.partitionId() == partition and task.attemptNumber() == 0
        for i, batch in enumerate(predictor(batches)):
            yield batch
            if armed and i == 0:
                if what == "engine":
                    from torchspark.spark.executor import identify

                    mine = [r for r in loads(os.environ["TORCHSPARK_SHARED_DIR"])]
                    mine = [r for r in mine if r["executor"] == identify().id]
                    os.kill(mine[-1]["pid"], signal.SIGKILL)
                else:
                    timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGKILL))
                    timer.start()

    return run


def main(workdir: str) -> dict:
    import torch

    import torchspark

    shared = os.path.join(workdir, "shared")
    shm_before = set(os.listdir("/dev/shm"))
    model_path = model_file(workdir)

    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local-cluster[2,2,2048]")
        .appName("torchspark-shared-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.memory", "768m")
        .config("spark.task.maxFailures", "4")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.executorEnv.TORCHSPARK_SHARED_DIR", shared)
        .config("spark.executorEnv.TORCHSPARK_CACHE", os.path.join(workdir, "cache"))
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    result: dict = {
        "executors": wait_for_executors(sc, 2),
        "partitions": PARTITIONS,
        "timings": {},
    }
    started = time.time()

    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * {FEATURES} + i) as float))"
        " as features",
        "cast(spark_partition_id() as float) as tag",
    )
    df = df.cache()
    source = df.select("id", "features").toArrow().sort_by("id")
    x = torch.tensor(source.column("features").to_pylist(), dtype=torch.float32)
    reference = torch.jit.load(model_path)(x, torch.zeros(len(x)))[0].detach().numpy()
    inputs = ["features", ["tag"]]
    options = {"batch_size": 400, "max_delay_ms": 20.0, "inflight": 1}

    # 1. One engine per executor, shared by its tasks.
    scored = torchspark.predict(
        df, model_path, inputs=inputs, keep=["id"], share="executor", **options
    )
    main = checked(scored, source, reference)
    report = torchspark.last_report()
    main["rows"] = ROWS
    main["tasks"] = report.tasks
    main["engine_pids"] = sorted({r["engine_pid"] for r in report.task_records})
    main["shares"] = sorted({r["share"] for r in report.task_records})
    result["main"] = main
    result["loads"] = loads(shared)
    result["timings"]["main"] = round(time.time() - started, 2)

    # 2. A job cancelled mid-way (sc.cancelAllJobs()): its tasks leave the
    # engines with rows in flight; the engines go on serving the next job.
    cancelled: dict = {}

    def doomed() -> None:
        try:
            torchspark.predict(
                df, model_path, inputs=inputs, keep=["id"], share="executor", **options
            ).write.format("noop").mode("overwrite").save()
            cancelled["finished"] = True
        except Exception as e:
            cancelled["error"] = type(e).__name__

    job = threading.Thread(target=doomed)
    job.start()
    time.sleep(2.0)
    sc.cancelAllJobs()
    job.join(timeout=120)
    again = torchspark.predict(
        df, model_path, inputs=inputs, keep=["id"], share="executor", **options
    )
    cancelled.update(checked(again, source, reference))
    report = torchspark.last_report()
    cancelled["engine_pids"] = sorted({r["engine_pid"] for r in report.task_records})
    cancelled["loads"] = len(loads(shared))
    result["cancelled"] = cancelled
    result["timings"]["cancelled"] = round(time.time() - started, 2)

    # 3. and 4. An engine killed, a Python worker killed: retried.
    for case, what, partition in (("engine_killed", "engine", 5), ("worker_killed", "worker", 9)):
        fn = torchspark.arrow_predictor(
            df, model_path, inputs=inputs, keep=["id"], share="executor", **options
        )
        scored = df.mapInArrow(killing(fn, partition, what), fn.schema)
        outcome = checked(scored, source, reference)
        report = torchspark.last_report()
        outcome["attempts"] = sum(1 for r in report.task_records if r["attempt"] > 0)
        outcome["killed"] = outcome["attempts"] > 0
        result[case] = outcome
        result["timings"][case] = round(time.time() - started, 2)
    result["loads_after"] = loads(shared)

    spark.stop()
    # The executors' JVMs exit; their engines see it (pidfd) and remove their sockets.
    deadline = time.time() + 30
    sockets = glob.glob(os.path.join(shared, "*", "*", "*.sock"))
    while sockets and time.time() < deadline:
        time.sleep(0.5)
        sockets = glob.glob(os.path.join(shared, "*", "*", "*.sock"))
    result["sockets_left"] = sockets
    result["shm_new"] = sorted(set(os.listdir("/dev/shm")) - shm_before)
    result["timings"]["stopped"] = round(time.time() - started, 2)
    return result


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    job_environment(workdir)
    out = main(workdir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
