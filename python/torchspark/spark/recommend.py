"""The rules that turn settings and measurements into advice: :func:`recommend`.

Pure functions of a :class:`~torchspark.spark.cluster_conf.ClusterConf` (the
job's Spark settings) and a :class:`~torchspark.model_profile.ModelProfile`
(what one Python worker with one model copy measured). Each rule gives a
:class:`Recommendation`: the setting, the value it recommends, the current
value, the rule in words, the measured numbers it applied the rule to, and a
warning when the current value will hurt. The rules:

- ``spark.task.cpus``: on CPU executors, one task per core (every task its
  own model copy and one intra-op thread) unless torch's threads scaled
  nearly as well as tasks do (a speedup of at least ``THREAD_EFFICIENCY`` x
  threads on the measured batch): then tasks of that many threads, as fast,
  with that many times fewer model copies. GPU executors: one core per task.
- ``intra_op_threads`` (a ``predict`` option): torchspark sizes torch's pool
  from ``spark.task.cpus``; more threads than that times tasks than cores
  makes them fight over the cores.
- ``spark.sql.execution.arrow.maxRecordsPerBatch``: at least the throughput
  knee (the smallest measured batch within ``KNEE_FRACTION`` of the best
  rows/s: ``predict``'s batch size is Spark's Arrow batch size); a warning
  below a quarter of it.
- ``spark.task.resource.gpu.amount``: enough tasks per GPU to use every
  core of the executor (1/n for n tasks on a GPU; each holds a model copy in
  GPU memory). A warning when the GPUs admit fewer tasks than the cores do.
- ``spark.executor.memoryOverhead`` (YARN, Kubernetes): Python workers live
  outside the executor JVM's heap (``spark.executor.memory``), in the
  overhead the cluster manager adds to the container: it must hold K workers
  (K concurrent tasks), each measured: the worker, one model copy, the
  working memory of one batch. ``spark.executor.pyspark.memory`` caps each
  worker's address space at that amount over the executor's cores. With a
  ``local[N]`` master: N workers must fit this machine's memory.
- ``spark.network.timeout``, ``spark.files.fetchTimeout``: every executor
  fetches the model file from the driver, all at once: N x the file's size
  through the driver's link (``network_mb_s``, an assumption, not a
  measurement), then a load; twice that time at least.
- ``spark.locality.wait``: 0 on Kubernetes (data in object stores has no
  locality) and on GPU executors (a slot waiting for locality idles a GPU).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..model_profile import KNEE_FRACTION, ModelProfile
from .cluster_conf import ClusterConf

__all__ = ["THREAD_EFFICIENCY", "Diagnosis", "Recommendation", "recommend"]

# Threads that scale at least this well (speedup / threads) serve as well as
# as many tasks, with fewer model copies.
THREAD_EFFICIENCY = 0.8
# An Arrow batch size below knee / this is "far below" the knee: a warning.
FAR_BELOW_KNEE = 4
# Timeouts: at least this many times the estimated shipping time.
TIMEOUT_MARGIN = 2.0
_JVM_OVERHEAD_MB = 384  # Spark's floor for the overhead: the JVM's own off-heap needs


@dataclass(frozen=True)
class Recommendation:
    """One setting: the value recommended, why, and the numbers behind it."""

    setting: str  # a Spark setting, or "predict(option=)" for a torchspark option
    value: str
    current: str | None
    reason: str  # the rule
    measurement: str  # the measured (or configured) numbers it was applied to
    warning: str | None = None  # set when the current value will hurt, and how

    @property
    def changes(self) -> bool:
        return self.current != self.value

    def __str__(self) -> str:
        now = "" if self.current is None else f"   (now {self.current})"
        lines = [f"  {self.setting} = {self.value}{now}"]
        if self.warning:
            lines.append(f"      WARNING: {self.warning}")
        lines.append(f"      why: {self.reason}")
        lines.append(f"      measured: {self.measurement}")
        return "\n".join(lines)


@dataclass
class Diagnosis:
    """Recommended settings for scoring with a model under a Spark configuration."""

    conf: ClusterConf
    profile: ModelProfile
    recommendations: list[Recommendation] = field(default_factory=list)

    @property
    def warnings(self) -> list[Recommendation]:
        """The recommendations whose current value will hurt."""
        return [r for r in self.recommendations if r.warning]

    def get(self, setting: str) -> Recommendation | None:
        return next((r for r in self.recommendations if r.setting == setting), None)

    def spark_conf(self) -> dict[str, str]:
        """The Spark settings to change (recommended values that differ from
        the current ones), for ``--conf`` or ``SparkSession.builder.config``."""
        return {
            r.setting: r.value
            for r in self.recommendations
            if r.setting.startswith("spark.") and r.changes
        }

    def __str__(self) -> str:
        p, c = self.profile, self.conf
        weights = "" if p.weights_bytes is None else f", {_size(p.weights_bytes)} of weights"
        timings = ", ".join(
            f"{t.rows} rows {t.seconds * 1e3:.3g} ms ({_rate(t.rows_per_s)})" for t in p.timings
        )
        lines = [
            f"torchspark doctor: model '{p.path}' ({p.format}, file {_size(p.file_bytes)}"
            f"{weights}), master {c.master} ({c.manager})",
            f"measured on {p.device}, one Python worker with {p.threads} intra-op thread(s): "
            f"worker {_size(p.worker_bytes)}, model load +{_size(p.load_bytes)} in "
            f"{p.load_seconds:.3g} s; batches: {timings}",
            "",
            "Recommended settings:",
            *(str(r) for r in self.recommendations),
        ]
        changes = self.spark_conf()
        if changes:
            lines += ["", "spark-submit " + " ".join(f"--conf {k}={v}" for k, v in changes.items())]
        if self.warnings:
            lines += [
                "",
                f"{len(self.warnings)} warning(s): " + ", ".join(r.setting for r in self.warnings),
            ]
        return "\n".join(lines)


def recommend(
    conf: ClusterConf,
    profile: ModelProfile,
    *,
    intra_op_threads: int | None = None,
    network_mb_s: float = 100.0,
    physical_memory: int | None = None,
) -> Diagnosis:
    """Apply the rules (see the module) to ``conf`` and ``profile``.

    ``intra_op_threads``: the ``predict`` option, when the job sets it.
    ``network_mb_s``: the driver's network bandwidth in MB/s (an assumption:
    not measured; 100 MB/s is about a 1 Gbit/s link). ``physical_memory``:
    this machine's memory in bytes, for a local master (default: read here).
    """
    gpu = conf.executor_gpus > 0
    task_cpus, cpus_rec = (_gpu_task_cpus if gpu else _cpu_task_cpus)(conf, profile)
    batch_rows, batch_rec = _arrow_batch(conf, profile)
    found = [cpus_rec, _intra_op_threads(conf, task_cpus, intra_op_threads), batch_rec]
    tasks = None if conf.executor_cores is None else conf.executor_cores // task_cpus
    if gpu:
        gpu_rec, tasks = _task_gpus(conf)
        found.append(gpu_rec)
    found += _memory(conf, profile, tasks, batch_rows)
    found += _local_workers(conf, profile, tasks, batch_rows, physical_memory)
    found += _timeouts(conf, profile, network_mb_s)
    found += _locality(conf)
    return Diagnosis(conf, profile, [r for r in found if r is not None])


# ---------------------------------------------------------------------------
# Task cpus and threads


def _largest_divisor_at_most(cores: int | None, limit: int) -> int:
    if cores is None:
        return limit
    return max(d for d in range(1, min(cores, limit) + 1) if cores % d == 0)


def _scaling(profile: ModelProfile) -> str:
    speedup, many = profile.thread_speedup, profile.scaling_threads
    if speedup is None or profile.one_thread_seconds is None or profile.scaling_seconds is None:
        return "thread scaling not measured (one usable core where the doctor ran)"
    return (
        f"a {profile.knee.rows}-row batch took {profile.one_thread_seconds * 1e3:.3g} ms on 1 "
        f"thread and {profile.scaling_seconds * 1e3:.3g} ms on {many}: {speedup:.2f}x, "
        f"efficiency {speedup / many:.2f} (threshold {THREAD_EFFICIENCY})"
    )


def _cpu_task_cpus(conf: ClusterConf, profile: ModelProfile) -> tuple[int, Recommendation]:
    cores = conf.executor_cores
    speedup = profile.thread_speedup
    many = profile.scaling_threads
    scales = speedup is not None and speedup / many >= THREAD_EFFICIENCY
    value = _largest_divisor_at_most(cores, many) if scales else 1
    core_text = "unknown (set spark.executor.cores)" if cores is None else str(cores)
    if scales:
        reason = (
            f"torch's threads scaled almost as well as tasks do: tasks of {value} threads run "
            f"as fast as {value} single-thread tasks, with {value}x fewer model copies"
        )
    else:
        reason = (
            "one task per core: each task is a Python worker with its own model copy, Arrow "
            "IPC and conversion, and tasks scale with cores better than torch's threads did"
        )
    warning = None
    if cores is not None and cores % conf.task_cpus:
        warning = (
            f"{cores} executor cores are not a multiple of spark.task.cpus={conf.task_cpus}: "
            f"{cores % conf.task_cpus} core(s) never run a task"
        )
    elif conf.task_cpus > 1 and speedup is not None and not scales:
        warning = (
            f"spark.task.cpus={conf.task_cpus} gives each task {conf.task_cpus} intra-op "
            f"threads, which scaled to only {speedup:.2f}x on {many}: "
            f"{conf.task_cpus} tasks of one thread each would score more rows"
        )
    measured = f"executor cores {core_text}; {_scaling(profile)}"
    recommendation = Recommendation(
        "spark.task.cpus", str(value), str(conf.task_cpus), reason, measured, warning
    )
    return value, recommendation


def _gpu_task_cpus(conf: ClusterConf, profile: ModelProfile) -> tuple[int, Recommendation]:
    reason = (
        "on GPU executors the model runs on the GPU; a task's core does its Arrow IPC and "
        "conversion, so one core per task lets every core feed the GPUs"
    )
    measured = (
        f"spark.executor.resource.gpu.amount={conf.executor_gpus:g}, executor cores "
        f"{conf.executor_cores if conf.executor_cores is not None else 'unknown'}"
    )
    return 1, Recommendation("spark.task.cpus", "1", str(conf.task_cpus), reason, measured)


def _intra_op_threads(conf: ClusterConf, task_cpus: int, requested: int | None) -> Recommendation:
    tasks = conf.concurrent_tasks
    current = "unset (= spark.task.cpus)" if requested is None else str(requested)
    warning = None
    cores = conf.executor_cores
    known = requested is not None and tasks is not None and cores is not None
    if known and requested * tasks > cores:
        warning = (
            f"{requested} intra-op threads x {tasks} concurrent tasks = {requested * tasks} "
            f"threads on {cores} cores: they fight over the cores (every task slows down)"
        )
    reason = (
        "torchspark gives each task spark.task.cpus intra-op threads, so threads x "
        "concurrent tasks = executor cores; leave the option unset"
    )
    measured = (
        f"{tasks if tasks is not None else 'unknown'} concurrent task(s) per executor "
        f"(cores {conf.executor_cores if conf.executor_cores is not None else 'unknown'} / "
        f"spark.task.cpus {conf.task_cpus}"
        + ("" if conf.gpu_slots is None else f", GPU slots {conf.gpu_slots}")
        + ")"
    )
    return Recommendation(
        "predict(intra_op_threads=)",
        f"unset (= spark.task.cpus = {task_cpus})",
        current,
        reason,
        measured,
        warning,
    )


# ---------------------------------------------------------------------------
# Batches


def _arrow_batch(conf: ClusterConf, profile: ModelProfile) -> tuple[int, Recommendation]:
    knee = profile.knee
    current = conf.arrow_batch_rows
    value = current if current >= knee.rows else knee.rows
    rates = ", ".join(f"{t.rows}: {_rate(t.rows_per_s)}" for t in profile.timings)
    best = max(t.rows_per_s for t in profile.timings)
    measured = (
        f"rows/s by batch size on {profile.device}: {rates}; the knee (the smallest within "
        f"{KNEE_FRACTION:.0%} of the best, {_rate(best)}) is {knee.rows} rows"
    )
    if conf.executor_gpus > 0 and profile.device == "cpu":
        measured += " (measured on a CPU: run the doctor where a GPU is, for the GPU's knee)"
    reason = (
        "predict's batch size is Spark's Arrow batch size: at or above the knee the model "
        "runs at its best rows/s; past it a batch only costs more memory"
    )
    warning = None
    if current <= 0:
        value = knee.rows
        warning = (
            f"maxRecordsPerBatch={current} means no limit: one Arrow batch per partition, "
            "whose memory grows with the partition"
        )
    elif current * FAR_BELOW_KNEE <= knee.rows:
        at = profile.timing(current)
        rate = f" (measured {_rate(at.rows_per_s)})" if at is not None else ""
        warning = (
            f"{current} rows per batch{rate} is far below the knee at {knee.rows} rows "
            f"({_rate(knee.rows_per_s)}): the model runs below its throughput"
        )
    recommendation = Recommendation(
        "spark.sql.execution.arrow.maxRecordsPerBatch",
        str(value),
        str(current),
        reason,
        measured,
        warning,
    )
    return value, recommendation


# ---------------------------------------------------------------------------
# GPUs


def _gpu_fraction(tasks_per_gpu: int) -> float:
    """1/n rounded down to 4 decimals: Spark puts floor(1 / amount) tasks on a GPU."""
    return math.floor(10_000 / tasks_per_gpu) / 10_000


def _task_gpus(conf: ClusterConf) -> tuple[Recommendation, int | None]:
    gpus = int(conf.executor_gpus)
    cores = conf.executor_cores
    current = None if conf.task_gpus <= 0 else f"{conf.task_gpus:g}"
    if cores is None:
        measured = f"{gpus} GPU(s) per executor, executor cores unknown"
        reason = "set spark.executor.cores: tasks per GPU follow from it"
        return Recommendation(
            "spark.task.resource.gpu.amount", current or "1", current, reason, measured
        ), None
    per_gpu = max(1, cores // max(1, gpus))
    value = _gpu_fraction(per_gpu) if per_gpu > 1 else 1.0
    tasks = min(cores, per_gpu * max(1, gpus))
    reason = (
        f"{per_gpu} task(s) per GPU (1/{per_gpu}) so that every one of the {cores} cores runs "
        f"a task feeding the GPUs; each task holds its own model copy in GPU memory, so "
        f"{per_gpu} copies must fit one GPU (with share='executor' (when available): one copy "
        "per GPU)"
    )
    measured = f"{gpus} GPU(s) and {cores} cores per executor, spark.task.cpus {conf.task_cpus}"
    warning = None
    slots = conf.gpu_slots
    if slots is None:
        warning = (
            "spark.task.resource.gpu.amount is not set: tasks get no GPU address "
            "(TaskContext.resources() has no 'gpu'), so tasks do not know which GPU is theirs"
        )
    elif slots * conf.task_cpus < cores:
        idle = cores - slots * conf.task_cpus
        warning = (
            f"spark.task.resource.gpu.amount={conf.task_gpus:g} admits {slots} task(s) per "
            f"executor at once: {idle} of its {cores} cores stay idle"
        )
    recommendation = Recommendation(
        "spark.task.resource.gpu.amount", f"{value:g}", current, reason, measured, warning
    )
    return recommendation, tasks


# ---------------------------------------------------------------------------
# Memory


def _memory(
    conf: ClusterConf, profile: ModelProfile, tasks: int | None, batch_rows: int
) -> list[Recommendation]:
    found: list[Recommendation] = []
    worker = _worker_bytes(profile, batch_rows)
    parts = (
        f"one worker = {_size(profile.worker_bytes)} (Python with torchspark) + "
        f"{_size(profile.copy_bytes)} (a model copy: load measured +{_size(profile.load_bytes)}, "
        f"parameters and buffers {_size(profile.model_bytes)}) + "
        f"{_size(profile.peak_bytes(batch_rows))} (peak working memory of a {batch_rows}-row "
        f"batch) = {_size(worker)}"
    )
    if conf.manager in ("yarn", "kubernetes") and tasks is not None:
        needed_mb = math.ceil(tasks * worker / 2**20)
        current = conf.memory_overhead_mb
        python_mb = current + (conf.pyspark_memory_mb or 0)
        value = max(current, _JVM_OVERHEAD_MB + needed_mb)
        warning = None
        if python_mb < needed_mb:
            warning = (
                f"{tasks} concurrent task(s) need {needed_mb} MiB of Python workers but the "
                f"executor's overhead{' + pyspark memory' if conf.pyspark_memory_mb else ''} "
                f"is {python_mb} MiB: {conf.manager} kills the executor's container when "
                "they exceed it"
            )
        reason = (
            "each concurrent task is a Python worker with its own model copy, outside the "
            "executor JVM's heap (spark.executor.memory): the overhead must hold them, plus "
            f"{_JVM_OVERHEAD_MB} MiB for the JVM's own off-heap needs (with share='executor' "
            "(when available): one copy per executor)"
        )
        measured = f"{tasks} concurrent task(s) per executor; {parts}"
        found.append(
            Recommendation(
                "spark.executor.memoryOverhead",
                f"{value}m",
                f"{current}m",
                reason,
                measured,
                warning,
            )
        )
    if conf.pyspark_memory_mb is not None:
        cores = conf.executor_cores or 1
        limit_mb = conf.pyspark_memory_mb // cores
        space_mb = math.ceil(profile.address_space_bytes / 2**20)
        warning = None
        if limit_mb < space_mb:
            warning = (
                f"each Python worker may map at most {limit_mb} MiB (RLIMIT_AS), but one "
                f"running this model mapped {space_mb} MiB: allocations fail (MemoryError) "
                "or the worker dies"
            )
        reason = (
            "PySpark enforces spark.executor.pyspark.memory as an address-space limit of "
            "that amount over the executor's cores per worker; torch maps far more address "
            "space than it uses, so set it to at least cores x a worker's address space, or "
            "leave it unset and size spark.executor.memoryOverhead"
        )
        measured = (
            f"a worker's address space after loading and running the model: {space_mb} MiB; "
            f"{conf.pyspark_memory_mb} MiB / {cores} cores = {limit_mb} MiB per worker"
        )
        found.append(
            Recommendation(
                "spark.executor.pyspark.memory",
                f"{max(conf.pyspark_memory_mb, space_mb * cores)}m",
                f"{conf.pyspark_memory_mb}m",
                reason,
                measured,
                warning,
            )
        )
    return found


def _worker_bytes(profile: ModelProfile, batch_rows: int) -> int:
    return profile.worker_bytes + profile.copy_bytes + profile.peak_bytes(batch_rows)


def _local_workers(
    conf: ClusterConf,
    profile: ModelProfile,
    tasks: int | None,
    batch_rows: int,
    physical_memory: int | None,
) -> list[Recommendation]:
    """local[N]: N Python workers on this machine, which has the memory it has."""
    if conf.manager != "local" or tasks is None:
        return []
    memory = physical_memory if physical_memory is not None else _physical_memory()
    worker = _worker_bytes(profile, batch_rows)
    fits = max(1, memory // worker)
    value = min(tasks, fits)
    warning = None
    if tasks > fits:
        warning = (
            f"{tasks} concurrent tasks need {_size(tasks * worker)} of Python workers; this "
            f"machine has {_size(memory)}: it swaps or the kernel kills workers"
        )
    return [
        Recommendation(
            "spark.master",
            f"local[{value * conf.task_cpus}]" if value < tasks else conf.master,
            conf.master,
            "in local mode every task's Python worker, each with its model copy, runs on "
            "this machine: no more at once than its memory holds",
            f"{tasks} concurrent task(s) x {_size(worker)} per worker (measured) against "
            f"{_size(memory)} of memory",
            warning,
        )
    ]


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------------------
# Timeouts and locality


def _timeouts(
    conf: ClusterConf, profile: ModelProfile, network_mb_s: float
) -> list[Recommendation]:
    if conf.manager == "local":
        return []  # the executor is the driver: nothing is fetched
    executors = conf.executor_instances or 1
    transfer = executors * profile.file_bytes / (network_mb_s * 1e6)
    needed = math.ceil(TIMEOUT_MARGIN * (transfer + profile.load_seconds))
    measured = (
        f"model file {_size(profile.file_bytes)} x {executors} executor(s)"
        f"{'' if conf.executor_instances else ' (spark.executor.instances not set: 1 assumed)'}"
        f" at {network_mb_s:g} MB/s (assumed, not measured) = {transfer:.3g} s, + load "
        f"{profile.load_seconds:.3g} s (measured); x {TIMEOUT_MARGIN:g} = {needed} s"
    )
    reason = (
        "every executor fetches the model file from the driver at the job's start, all "
        "through the driver's link; a fetch slower than the timeout fails the task (for large "
        "models, a model URI such as s3://... is fetched once per host instead)"
    )
    found = []
    for setting, current in (
        ("spark.network.timeout", conf.network_timeout_s),
        ("spark.files.fetchTimeout", conf.fetch_timeout_s),
    ):
        warning = None
        if current < needed:
            warning = f"{current:g} s is less than the {needed} s the model's shipping needs"
        found.append(
            Recommendation(
                setting, f"{max(current, needed):g}s", f"{current:g}s", reason, measured, warning
            )
        )
    return found


def _locality(conf: ClusterConf) -> list[Recommendation]:
    gpu = conf.executor_gpus > 0
    if conf.manager != "kubernetes" and not gpu:
        return []
    why = []
    if conf.manager == "kubernetes":
        why.append("on Kubernetes data comes from object stores, with no locality to wait for")
    if gpu:
        why.append("a task slot waiting for locality leaves a GPU idle")
    measured = f"master {conf.master}; executor GPUs {conf.executor_gpus:g}"
    return [
        Recommendation(
            "spark.locality.wait", "0s", f"{conf.locality_wait_s:g}s", "; ".join(why), measured
        )
    ]


# ---------------------------------------------------------------------------
# Formatting


def _size(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{int(count)} B"


def _rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.3g}M rows/s"
    if rows_per_s >= 1e3:
        return f"{rows_per_s / 1e3:.3g}k rows/s"
    return f"{rows_per_s:.3g} rows/s"
