"""Where a task's engine lives: ``share="executor"``, ``"task"`` or ``"auto"``.

Chosen on the driver (:func:`sharing`, which also warns about GPU settings
that make each task load its own copy of a model) and applied in each task
(:meth:`Sharing.shared`). ``"auto"`` shares the engine on an accelerator that
several tasks use (unless ``spark.task.resource.gpu.amount`` gives each task
a whole GPU: one task per device, nothing to share, and on the simulated
device one task alone ran 0.94-0.98x through the shared engine) and keeps
one engine per task on the CPU. There the shared engine now matches the
per-task engines (0.97-1.20x on the Spark benchmark's workloads) and saves
host memory, but it is one more process per executor, Linux only, needs
custom ops' libraries named (``TORCHSPARK_OP_LIBRARIES``) and reports the
engine's statistics for all of an executor's tasks: an opt-in there (see
benchmarks/RESULTS.md, "the shared engine").
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from ..cluster_conf import ClusterConf

MODES = ("executor", "task", "auto")
logger = logging.getLogger("torchspark")


@dataclass(frozen=True)
class Sharing:
    """What a task needs to find its executor's engine."""

    mode: str  # one of MODES
    application: str  # Spark's application id: engines are never shared across applications
    cores: int | None = None  # the executor's cores (None: unknown, the engine's own)
    task_cpus: int | None = None  # spark.task.cpus: intra-op threads of each engine thread
    whole_gpu: bool = False  # spark.task.resource.gpu.amount > 1/2: a GPU to each task

    def shared(self, device: Any) -> bool:
        """Whether a task on ``device`` uses its executor's engine (``"auto"``:
        on an accelerator of a Linux executor, where the transport exists,
        unless each task has a GPU of its own)."""
        if self.mode == "auto":
            return device.type != "cpu" and sys.platform == "linux" and not self.whole_gpu
        return self.mode == "executor"


def sharing(spark: Any, share: str, device: str = "auto") -> Sharing:
    """``share`` checked, with the session's application id, its executors'
    cores (Spark's default per cluster manager where unset: N with
    ``local[N]``, 1 on YARN and Kubernetes, unknown on a standalone cluster)
    and ``spark.task.cpus``.

    Warns when the GPU settings make several tasks hold a model copy each on
    one GPU: a fractional ``spark.task.resource.gpu.amount`` (several tasks
    per GPU) with ``share="task"``.
    """
    if share not in MODES:
        raise ValueError(f"share must be one of {list(MODES)}, got {share!r}")
    # From the session's conf (it holds the application's Spark conf): a
    # Spark Connect client has no SparkContext.
    cluster = ClusterConf.from_session(spark)
    amount = cluster.task_gpus
    # Tasks per GPU by Spark's rule (floor(1 / amount)); 1 with a GPU or more per task.
    tasks = int(1 / amount + 1e-9) if 0 < amount < 1 else 1
    if tasks > 1 and share == "task" and not str(device).startswith("cpu"):
        message = (
            f"torchspark: spark.task.resource.gpu.amount={amount:g} runs {tasks} tasks per GPU "
            f"and share='task' makes each of them load its own copy of the model on it "
            f"({tasks} copies per GPU); share='executor' (or 'auto') loads one per GPU and "
            "batches the tasks' rows together"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    return Sharing(
        share,
        str(spark.conf.get("spark.app.id")),
        cluster.executor_cores,
        cluster.task_cpus,
        amount > 0 and tasks == 1,
    )
