"""The Spark settings that shape a scoring job, read once: :class:`ClusterConf`.

From a live session (``spark.conf``, so Spark Connect works too) or from a
plain mapping of settings (what ``spark-submit --conf`` / ``spark-defaults.conf``
would set, no session needed). Values are parsed as Spark parses them
(``"4g"``, ``"512m"``; ``"120s"``, ``"3s"``, ``"500ms"``) and Spark's defaults
fill what is not set, per cluster manager (the master URL): executor cores
default to 1 on YARN and Kubernetes, to every core of a worker on a
standalone cluster (unknown here), to N with ``local[N]``.

>>> from torchspark.spark.cluster_conf import ClusterConf
>>> conf = ClusterConf.from_mapping({"spark.master": "k8s://https://k8s:443",
...                                  "spark.executor.cores": "8",
...                                  "spark.executor.memory": "16g"})
>>> conf.manager, conf.executor_cores, conf.executor_memory_mb, conf.memory_overhead_mb
('kubernetes', 8, 16384, 1638)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEYS", "ClusterConf", "parse_bytes_mb", "parse_seconds"]

# Every setting read (the session is asked for these and only these).
KEYS = (
    "spark.master",
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.executor.memory",
    "spark.executor.memoryOverhead",
    "spark.executor.memoryOverheadFactor",
    "spark.executor.pyspark.memory",
    "spark.task.cpus",
    "spark.executor.resource.gpu.amount",
    "spark.task.resource.gpu.amount",
    "spark.sql.execution.arrow.maxRecordsPerBatch",
    "spark.network.timeout",
    "spark.files.fetchTimeout",
    "spark.locality.wait",
)

_MIN_OVERHEAD_MB = 384  # Spark's floor for spark.executor.memoryOverhead
_UNITS_MB = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2, "p": 1024**3}
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_bytes_mb(value: str, setting: str) -> int:
    """A Spark size (``"4g"``, ``"512m"``, ``"1024"`` = MiB) in MiB."""
    found = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?b?)?\s*", str(value).lower())
    if found is None:
        raise ValueError(f"{setting}: expected a size such as 4g or 512m, got {value!r}")
    unit = (found[2] or "m").rstrip("b") or "b"  # bare numbers are MiB; "b" alone is bytes
    return math.ceil(int(found[1]) * _UNITS_MB[unit])


def parse_seconds(value: str, setting: str, bare: str = "s") -> float:
    """A Spark duration (``"120s"``, ``"500ms"``, ``"2min"``) in seconds; a bare
    number is in ``bare`` units (seconds for most settings, ms for some)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
    if found is None or (found[2] or bare) not in _UNITS_S:
        raise ValueError(f"{setting}: expected a duration such as 120s or 500ms, got {value!r}")
    return float(found[1]) * _UNITS_S[found[2] or bare]


def _manager(master: str) -> str:
    if master.startswith("local-cluster"):
        return "local-cluster"
    if master.startswith("local"):
        return "local"
    for prefix, name in (("k8s://", "kubernetes"), ("spark://", "standalone"), ("yarn", "yarn")):
        if master.startswith(prefix):
            return name
    if master.startswith("sc://"):
        return "connect"
    return "unknown"


def _local_cores(master: str) -> int:
    """N of local[N] / local[N,F]; every core for local[*] and plain local."""
    found = re.fullmatch(r"local\[(\*|\d+)(?:,\d+)?\]", master)
    if master == "local":
        return 1
    if found is None or found[1] == "*":
        return os.cpu_count() or 1
    return int(found[1])


@dataclass(frozen=True)
class ClusterConf:
    """What the job's executors look like, by Spark's settings and defaults."""

    master: str
    manager: str  # local, local-cluster, standalone, yarn, kubernetes, connect, unknown
    executor_cores: int | None  # None: Spark's default is unknown here (standalone)
    executor_instances: int | None  # None: not set (dynamic allocation, or unknown)
    executor_memory_mb: int  # the executor JVM's heap (spark.executor.memory)
    memory_overhead_mb: int  # off-heap allowance: where Python workers live on YARN/K8s
    pyspark_memory_mb: int | None  # spark.executor.pyspark.memory, when set
    task_cpus: int
    executor_gpus: float  # spark.executor.resource.gpu.amount (0: no GPUs)
    task_gpus: float  # spark.task.resource.gpu.amount (0: none)
    arrow_batch_rows: int  # spark.sql.execution.arrow.maxRecordsPerBatch (<= 0: unlimited)
    network_timeout_s: float
    fetch_timeout_s: float
    locality_wait_s: float
    explicit: frozenset[str] = field(default_factory=frozenset)  # settings that were set

    @classmethod
    def from_mapping(cls, conf: Mapping[str, Any]) -> ClusterConf:
        """From settings by name (unset ones take Spark's defaults)."""
        given = {k: str(v) for k, v in conf.items() if v is not None}

        def get(key: str, default: str) -> str:
            return given.get(key, default)

        master = get("spark.master", "local[*]")
        manager = _manager(master)
        cores: int | None
        instances: int | None = None
        memory_default = "1g"
        if "spark.executor.cores" in given:
            cores = int(given["spark.executor.cores"])
        elif manager == "local":
            cores = _local_cores(master)
        elif manager in ("yarn", "kubernetes"):
            cores = 1
        else:
            cores = None
        cluster = re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*(\d+)\]", master)
        if cluster is not None:
            instances = int(cluster[1])
            cores = int(given.get("spark.executor.cores", cluster[2]))
        if manager == "local":
            instances = 1
        if "spark.executor.instances" in given:
            instances = int(given["spark.executor.instances"])
        memory = parse_bytes_mb(
            get("spark.executor.memory", memory_default), "spark.executor.memory"
        )
        if "spark.executor.memoryOverhead" in given:
            overhead = parse_bytes_mb(
                given["spark.executor.memoryOverhead"], "spark.executor.memoryOverhead"
            )
        else:
            factor = float(get("spark.executor.memoryOverheadFactor", "0.1"))
            overhead = max(_MIN_OVERHEAD_MB, int(memory * factor))
        pyspark = given.get("spark.executor.pyspark.memory")
        return cls(
            master=master,
            manager=manager,
            executor_cores=cores,
            executor_instances=instances,
            executor_memory_mb=memory,
            memory_overhead_mb=overhead,
            pyspark_memory_mb=(
                parse_bytes_mb(pyspark, "spark.executor.pyspark.memory") if pyspark else None
            ),
            task_cpus=int(get("spark.task.cpus", "1")),
            executor_gpus=float(get("spark.executor.resource.gpu.amount", "0")),
            task_gpus=float(get("spark.task.resource.gpu.amount", "0")),
            arrow_batch_rows=int(get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")),
            network_timeout_s=parse_seconds(
                get("spark.network.timeout", "120s"), "spark.network.timeout"
            ),
            fetch_timeout_s=parse_seconds(
                get("spark.files.fetchTimeout", "60s"), "spark.files.fetchTimeout"
            ),
            # spark.locality.wait is a time in milliseconds when bare.
            locality_wait_s=parse_seconds(
                get("spark.locality.wait", "3s"), "spark.locality.wait", bare="ms"
            ),
            explicit=frozenset(k for k in KEYS if k in given),
        )

    @classmethod
    def from_session(cls, spark: Any) -> ClusterConf:
        """From a SparkSession's settings (``spark.conf``; works under Connect)."""
        values = {key: spark.conf.get(key, None) for key in KEYS}
        if values["spark.master"] is None:
            try:
                values["spark.master"] = spark.sparkContext.master
            except Exception:  # Spark Connect: no SparkContext
                values["spark.master"] = "sc://"
        return cls.from_mapping(values)

    @property
    def gpu_slots(self) -> int | None:
        """Tasks the executor's GPUs admit at once (None without GPUs per task).
        A fraction a <= 1 puts floor(1 / a) tasks on each GPU (Spark's rule)."""
        if self.executor_gpus <= 0 or self.task_gpus <= 0:
            return None
        if self.task_gpus <= 1:
            return int(self.executor_gpus) * int(1 / self.task_gpus + 1e-9)
        return int(self.executor_gpus // self.task_gpus)

    @property
    def concurrent_tasks(self) -> int | None:
        """Tasks an executor runs at once: its cores over spark.task.cpus, and
        no more than its GPUs admit (None when the cores are unknown)."""
        if self.executor_cores is None:
            return None
        tasks = self.executor_cores // max(1, self.task_cpus)
        slots = self.gpu_slots
        return tasks if slots is None else min(tasks, slots)
