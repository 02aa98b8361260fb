"""Faults injected into torchspark jobs on a two-host Spark cluster, run by tests/test_faults.py.

The cluster is what ``local-cluster`` runs in one JVM, as separate processes:
a standalone Master and two Workers (one core each), the Workers bound to
127.0.0.2 and 127.0.0.3, so that their executors are on two hosts as far as
Spark knows. Spark never starts a speculative copy of a task on a host where
an attempt of it runs, so ``local-cluster``, whose executors share one host
name, cannot speculate. One application (one SparkContext per process, hence
a subprocess) with speculation on and the FAIR scheduler, running in turn:

1. concurrent ``predict`` jobs from three driver threads, three models;
2. a model file replaced on disk between two jobs under the same path;
3. ``spark.speculation`` with ``on_error="quarantine"``: both attempts of
   partition 0 score it and write its bad rows, then the first is held back,
   so that the second, on the other executor, wins while the first still runs;
4. a job cancelled mid-run (its job group), twice, then a job that completes;
   the Python workers' threads and live engines before and after;
5. an executor JVM killed with SIGKILL mid-job (its pid found in /proc);
6. steps 3 and 5 again with ``share="executor"`` (one engine process per
   executor, issue 11): speculative attempts on two engines, and the killed
   executor's engine exits with its JVM, removing its socket; after
   ``spark.stop()`` no engine runs and no socket is left.

Each job's output is checked against eager PyTorch on the driver: every id
exactly once (count, distinct count, anti-joins both ways) and predictions
equal. Usage: ``python spark_fault_job.py WORKDIR`` writes
``WORKDIR/result.json``; logs go to stderr; the cluster's processes are
stopped however the script ends.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from spark_cluster_job import job_environment, wait_for_executors
from spark_shared_job import loads

PARTITIONS = 8
ROWS = 4000
FEATURES = 8
SLOW_ROWS = 32000
SLOW_PARTITIONS = 16
SLOW_WIDTH = 256
BAD_EVERY = 97  # speculation step: rows with id % 97 == 5 make the model raise


def _mlp(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Flatten(0)
    ).eval()


def _slow_model():
    """[rows, 256] -> [rows] after 24 tanh(x @ w): heavy enough per row that a
    job lasts long enough to be hit."""
    import torch

    class SlowNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.w = torch.nn.Parameter(torch.randn(SLOW_WIDTH, SLOW_WIDTH) / 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(24):
                x = torch.tanh(x @ self.w)
            return x.sum(1)

    return SlowNet().eval()


def check(scored, df, module, column: str = "features") -> dict:
    """Every id of ``df`` exactly once in ``scored``, and its prediction against ``module``."""
    import torch

    scored = scored.cache()  # scored once: the joins below reuse it
    table = scored.toArrow().sort_by("id")
    source = df.toArrow().sort_by("id")
    x = torch.tensor(source.column(column).to_pylist(), dtype=torch.float32)
    with torch.no_grad():
        expected = module(x)
    ids = table.column("id").to_pylist()
    result = {
        "count": len(ids),
        "distinct": len(set(ids)),
        "ids_equal": ids == source.column("id").to_pylist(),
        "missing": df.join(scored, "id", "left_anti").count(),
        "extra": scored.join(df, "id", "left_anti").count(),
    }
    scored.unpersist()
    if result["ids_equal"]:
        got = torch.tensor(table.column("prediction").to_pylist(), dtype=torch.float32)
        result["max_abs_diff"] = float((got - expected).abs().max())
    return result


def speculation(spark, workdir: str, module, share: str = "task") -> dict:
    """Partition 0 scored twice at once (``spark.speculation``) with
    ``on_error="quarantine"``: each attempt scores every row of the partition
    and writes its bad rows (a temporary file renamed into place); the first
    attempt is then held back 12 s downstream of ``predict``, and the copy on
    the other host finishes only once the first has scored, so that both wrote.
    The directory must hold each bad row once, in whole Parquet files and
    nothing else, and the output every other id once. ``share`` is
    ``predict``'s (with ``"executor"`` the two attempts feed their executors'
    engine processes)."""
    import pyarrow.parquet as pq
    import torch

    import torchspark

    class RaisesOnLarge(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] > 1e5).any()):
                raise ValueError("feature 0 above the limit")
            return self.inner(x)

    path = os.path.join(workdir, "raises_on_large.pt")
    torch.jit.save(torch.jit.script(RaisesOnLarge(module)), path)
    bad_condition = f"pmod(id, {BAD_EVERY}) = 5"
    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(case when i = 0 and {bad_condition}"
        f" then 1e6 else sin(id * {FEATURES} + i) end as float)) as features",
    )
    bad = sorted(i for i in range(ROWS) if i % BAD_EVERY == 5)
    quarantine = os.path.join(workdir, f"quarantine-{share}")
    attempts = os.path.join(workdir, f"attempts-{share}")
    os.makedirs(attempts, exist_ok=True)

    def hold_first_attempt_after_scoring(batches):
        from pyspark import TaskContext

        task = TaskContext.get()
        scored = list(batches)  # predict has written this attempt's bad rows
        record = {"rows": sum(b.num_rows for b in scored), "scored_at": time.time()}
        partition, attempt = task.partitionId(), task.attemptNumber()
        first = os.path.join(attempts, "p0-a0.json")
        if partition == 0 and attempt > 0:
            # The first attempt may still be scoring (a cold worker): finish
            # only once it has written its file too, so that both have.
            deadline = time.time() + 60
            while not os.path.exists(first) and time.time() < deadline:
                time.sleep(0.1)
        with open(os.path.join(attempts, f"p{partition}-a{attempt}.json"), "w") as f:
            json.dump(record, f)
        if partition == 0 and attempt == 0:
            time.sleep(12)
        yield from scored

    scored = torchspark.predict(
        df,
        path,
        inputs="features",
        keep=["id"],
        on_error="quarantine",
        quarantine=quarantine,
        share=share,
    )
    held = scored.mapInArrow(hold_first_attempt_after_scoring, scored.schema)
    result = check(held, df.where(f"not ({bad_condition})"), module)
    report = torchspark.last_report()
    result["attempts_of_partition_0"] = sorted(
        r["attempt"] for r in report.task_records if r["partition"] == 0
    )
    result["shares"] = sorted({r.get("share") for r in report.task_records})
    result["report_rows"] = report.rows
    result["report_bad_rows"] = report.bad_rows
    scored_by = {}
    for name in sorted(os.listdir(attempts)):
        with open(os.path.join(attempts, name)) as f:
            scored_by[name.removesuffix(".json")] = json.load(f)
    result["scored_by"] = scored_by
    files = sorted(os.listdir(quarantine))
    result["quarantine_files"] = files
    set_aside = [
        i for name in files for i in pq.read_table(os.path.join(quarantine, name))["id"].to_pylist()
    ]
    result["set_aside"] = len(set_aside)
    result["set_aside_distinct"] = len(set(set_aside))
    result["set_aside_equal"] = sorted(set_aside) == bad
    result["expected_bad"] = len(bad)
    result["bad_in_partition_0"] = sum(1 for i in bad if i < ROWS // PARTITIONS)
    return result


@contextlib.contextmanager
def standalone_cluster(workdir: str) -> Iterator[str]:
    """A standalone Master on 127.0.0.1 and two one-core Workers on 127.0.0.2
    and 127.0.0.3, each in its own process group (its executors with it);
    yields the master URL, kills them all on exit."""
    home = os.environ["SPARK_HOME"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    master = f"spark://127.0.0.1:{port}"
    env = dict(os.environ, SPARK_DAEMON_MEMORY="256m", SPARK_NO_DAEMONIZE="1")
    spark_class = os.path.join(home, "bin", "spark-class")
    commands = [
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)],
        *[
            [
                *("org.apache.spark.deploy.worker.Worker", "--host", f"127.0.0.{i}"),
                *("--cores", "1", "--memory", "1g"),
                *("--work-dir", os.path.join(workdir, f"worker{i}"), master),
            ]
            for i in (2, 3)
        ],
    ]
    processes = []
    try:
        for i, command in enumerate(commands):
            log = open(os.path.join(workdir, f"daemon{i}.log"), "wb")  # noqa: SIM115
            processes.append(
                subprocess.Popen(
                    [spark_class, command[0], *command[1:], "--webui-port", "0"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if i == 0:
                time.sleep(3)  # the Master first, so that the Workers find it
        yield master
    finally:
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_for_tasks(sc, group: str, done: int, timeout: float = 120) -> bool:
    """Waits until a stage of job group ``group`` with more than one task has
    ``done`` tasks finished (the job is then under way, not over)."""
    tracker = sc.statusTracker()
    deadline = time.time() + timeout
    while time.time() < deadline:
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info else []:
                s = tracker.getStageInfo(stage)
                if s and s.numTasks > 1 and s.numCompletedTasks >= done:
                    return True
        time.sleep(0.05)
    return False


def executor_pids(app_id: str) -> list[int]:
    """The pids of ``app_id``'s executor JVMs, from /proc (full command lines)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in args and any(
            app_id.encode() in a for a in args
        ):
            pids.append(int(entry))
    return sorted(pids)


def python_workers(df) -> dict[int, dict]:
    """Python worker pid -> its thread count and, if it imported torchspark,
    its live engines, from a mapInArrow over ``df`` (the busiest reading per pid)."""

    def probe(batches):
        import os as _os
        import sys as _sys

        import pyarrow as pa

        for _ in batches:
            pass
        with open("/proc/self/status") as f:
            threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        engine = _sys.modules.get("torchspark.engine")
        engines = len(engine._live) if engine is not None else 0
        row = {"pid": _os.getpid(), "threads": threads, "engines": engines}
        yield pa.RecordBatch.from_pylist([row])

    workers: dict[int, dict] = {}
    for r in df.mapInArrow(probe, "pid long, threads long, engines long").collect():
        seen = workers.setdefault(r.pid, {"threads": 0, "engines": 0})
        seen["threads"] = max(seen["threads"], r.threads)
        seen["engines"] = max(seen["engines"], r.engines)
    return workers


def shared_engines(shared: str) -> list[dict]:
    """The engine processes started under ``shared`` (``$TORCHSPARK_SHARED_DIR``):
    their ``loads.jsonl`` lines, each with ``alive`` and its socket's path."""
    engines = loads(shared)
    for record in engines:
        record["alive"] = alive(record["pid"])
        record["socket"] = os.path.join(record["directory"], record["key"] + ".sock")
    return engines


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: the engine's parent is init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def settle(condition, timeout: float = 20.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


def kill_an_executor(sc, df, path: str, module, share: str, shared: str) -> dict:
    """SIGKILL one of the application's executor JVMs once two tasks of a
    ``predict`` job over ``df`` are done; the job's check, the pids, and with
    ``share="executor"`` what became of the killed executor's engines."""
    from pyspark import InheritableThread

    import torchspark

    app_id = sc.applicationId
    pids = executor_pids(app_id)
    outcome: dict = {}
    group = f"kill-{share}"

    def killed_job() -> None:
        sc.setJobGroup(group, "an executor is killed under it")
        try:
            scored = torchspark.predict(df, path, inputs="features", keep=["id"], share=share)
            outcome["check"] = check(scored, df, module)
            outcome["shares"] = sorted(
                {r.get("share") for r in torchspark.last_report().task_records}
            )
        except Exception as e:
            outcome["error"] = type(e).__name__ + ": " + str(e)[:500]

    t = InheritableThread(target=killed_job)
    t.start()
    wait_for_tasks(sc, group, 2)
    victim = pids[0] if pids else None
    running = t.is_alive() and not outcome  # the job had not ended when the kill came
    if victim is not None:
        engines = [e for e in shared_engines(shared) if e.get("jvm") == victim]
        os.kill(victim, signal.SIGKILL)
    t.join(timeout=300)
    result = {
        "executor_pids": pids,
        "killed": victim,
        "killed_mid_job": running,
        "alive_after": executor_pids(app_id),
        **outcome,
    }
    if share == "executor" and victim is not None:
        # The victim's engines watched its JVM: gone, their sockets removed.
        gone = settle(
            lambda: not any(alive(e["pid"]) or os.path.exists(e["socket"]) for e in engines)
        )
        result["victim_engines"] = [e["pid"] for e in engines]
        result["victim_engines_gone"] = gone
        result["engines_after"] = [
            {"pid": e["pid"], "jvm": e.get("jvm"), "alive": e["alive"]}
            for e in shared_engines(shared)
        ]
    return result


def main(workdir: str, master: str) -> dict:
    import torch

    import torchspark

    started = time.time()
    shared = os.path.join(workdir, "shared")  # share="executor"'s engines (step 6)
    from pyspark import InheritableThread
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName("torchspark-fault-test")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executor.memory", "512m")
        .config("spark.task.maxFailures", "4")
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.speculation", "true")
        .config("spark.speculation.interval", "200ms")
        .config("spark.speculation.multiplier", "3")
        .config("spark.speculation.quantile", "0.5")
        .config("spark.speculation.minTaskRuntime", "2s")
        # Speculate on run time alone (not on Spark 3.4+'s input-rate efficiency test).
        .config("spark.speculation.efficiency.enabled", "false")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.executorEnv.TORCHSPARK_CACHE", os.path.join(workdir, "cache"))
        .config("spark.executorEnv.TORCHSPARK_SHARED_DIR", shared)
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    result: dict = {"timings": {}, "master": master}

    def mark(step: str) -> None:
        result["timings"][step] = round(time.time() - started, 2)

    result["executors"] = wait_for_executors(sc, 2)
    hosts = {e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos()}
    result["hosts"] = sorted(hosts - {"127.0.0.1"})  # the executors' (not the driver's)
    df = spark.range(0, ROWS, 1, PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * {FEATURES} + i) as float))"
        " as features",
    )
    df.cache().count()
    mark("session")

    # 1. Concurrent jobs from three driver threads (FAIR pools), three models.
    modules = [_mlp(seed) for seed in (1, 2, 3)]
    paths = [
        torchspark.export(m, torch.randn(4, FEATURES), os.path.join(workdir, f"mlp{i}.pt"))
        for i, m in enumerate(modules)
    ]
    concurrent: dict[int, dict] = {}

    def job(i: int) -> None:
        sc.setLocalProperty("spark.scheduler.pool", f"pool{i}")
        scored = torchspark.predict(df, paths[i], inputs="features", keep=["id"])
        concurrent[i] = check(scored, df, modules[i])

    threads = [InheritableThread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    result["concurrent"] = [concurrent.get(i) for i in range(3)]
    mark("concurrent")

    # 2. The same path, a different model on disk: the new model's predictions.
    changing = os.path.join(workdir, "changing.pt")
    torchspark.export(modules[0], torch.randn(4, FEATURES), changing)
    first = check(torchspark.predict(df, changing, inputs="features", keep=["id"]), df, modules[0])
    replacement = changing + ".new"
    torchspark.export(modules[1], torch.randn(4, FEATURES), replacement)
    os.replace(replacement, changing)
    second = check(torchspark.predict(df, changing, inputs="features", keep=["id"]), df, modules[1])
    result["changed_on_disk"] = {"first": first, "second": second}
    mark("changed_on_disk")

    # 3. Speculation with bad rows quarantined: both attempts of partition 0
    # score it and write its Parquet file; the first is then held back, so
    # that the copy on the other host wins while it still runs.
    result["speculation"] = speculation(spark, workdir, modules[0])
    mark("speculation")

    # 4. Cancel a slow job mid-run, twice; then a job that completes.
    slow = _slow_model()
    slow_path = torchspark.export(
        slow, torch.randn(4, SLOW_WIDTH), os.path.join(workdir, "slow.pt")
    )
    slow_df = spark.range(0, SLOW_ROWS, 1, SLOW_PARTITIONS).selectExpr(
        "id",
        f"transform(sequence(0, {SLOW_WIDTH - 1}), i -> cast(cos(id + i * 0.01) as float))"
        " as features",
    )
    slow_df.cache().count()
    small = slow_df.limit(SLOW_PARTITIONS * 10)
    check(torchspark.predict(small, slow_path, inputs="features", keep=["id"]), small, slow)
    before = python_workers(slow_df)
    cancels = []
    for attempt in range(2):
        errors: list[str] = []

        def cancelled_job(group: str = f"cancel{attempt}", sink: list = errors) -> None:
            sc.setJobGroup(group, "to be cancelled", interruptOnCancel=True)
            try:
                torchspark.predict(slow_df, slow_path, inputs="features", keep=["id"]).write.format(
                    "noop"
                ).mode("overwrite").save()
                sink.append("finished")
            except Exception as e:
                sink.append(type(e).__name__ + ": " + str(e).splitlines()[0][:200])

        t = InheritableThread(target=cancelled_job)
        t0 = time.time()
        t.start()
        under_way = wait_for_tasks(sc, f"cancel{attempt}", 2)
        sc.cancelJobGroup(f"cancel{attempt}")
        t.join(timeout=120)
        cancels.append(
            {"under_way": under_way, "outcome": errors, "seconds": round(time.time() - t0, 2)}
        )
    after_cancel = check(
        torchspark.predict(slow_df, slow_path, inputs="features", keep=["id"]), slow_df, slow
    )
    after = python_workers(slow_df)
    result["cancel"] = {
        "cancels": cancels,
        "after": after_cancel,
        "workers_before": before,
        "workers_after": after,
    }
    mark("cancel")

    # 5. SIGKILL one executor JVM mid-job: its tasks are retried elsewhere.
    result["kill"] = kill_an_executor(sc, slow_df, slow_path, slow, "task", shared)
    mark("kill")

    # 6. Speculation and a killed executor again, each executor's tasks
    # feeding one engine process (share="executor").
    result["speculation_shared"] = speculation(spark, workdir, modules[0], share="executor")
    mark("speculation_shared")
    result["kill_shared"] = kill_an_executor(sc, slow_df, slow_path, slow, "executor", shared)
    mark("kill_shared")
    spark.stop()
    # The executors' JVMs exit with the application; their engines with them.
    result["engines_stopped"] = settle(
        lambda: not any(e["alive"] for e in shared_engines(shared)), 30.0
    )
    result["engines_started"] = len(shared_engines(shared))
    result["sockets_left"] = sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(shared, "*", "*", "*.sock"))
    )
    return result


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    job_environment(workdir)
    with standalone_cluster(workdir) as master:
        out = main(workdir, master)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
