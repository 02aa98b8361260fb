"""Where a task's engine lives: ``share="executor"``, ``"task"`` or ``"auto"``.

Chosen on the driver (:func:`sharing`, which also warns about GPU settings
that make each task load its own copy of a model) and applied in each task
(:meth:`Sharing.shared`): ``"auto"`` shares the engine on accelerators and
keeps one per task on the CPU, where the shared engine was not as fast
(0.83x per-task on the MLP workload, 1.11x on the light one, in one run) and
its saving is memory (see benchmarks/RESULTS.md, "the shared engine").
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

MODES = ("executor", "task", "auto")
logger = logging.getLogger("torchspark")


@dataclass(frozen=True)
class Sharing:
    """What a task needs to find its executor's engine."""

    mode: str  # one of MODES
    application: str  # Spark's application id: engines are never shared across applications
    cores: int | None = None  # spark.executor.cores: the engine's threads on the CPU

    def shared(self, device: Any) -> bool:
        """Whether a task on ``device`` uses its executor's engine (``"auto"``:
        on an accelerator of a Linux executor, where the transport exists)."""
        if self.mode == "auto":
            return device.type != "cpu" and sys.platform == "linux"
        return self.mode == "executor"


def sharing(spark: Any, share: str, device: str = "auto") -> Sharing:
    """``share`` checked, with the session's application id and executor cores.

    Warns when the GPU settings make several tasks hold a model copy each on
    one GPU: a fractional ``spark.task.resource.gpu.amount`` (several tasks
    per GPU) with ``share="task"``.
    """
    if share not in MODES:
        raise ValueError(f"share must be one of {list(MODES)}, got {share!r}")
    # The session's conf (it holds the application's Spark conf): a Spark
    # Connect client has no SparkContext.
    conf = spark.conf
    amount = conf.get("spark.task.resource.gpu.amount", None)
    try:
        fraction = amount is not None and 0 < float(amount) < 1
    except ValueError:
        fraction = False
    if fraction and share == "task" and not str(device).startswith("cpu"):
        tasks = round(1 / float(amount))
        message = (
            f"torchspark: spark.task.resource.gpu.amount={amount} runs {tasks} tasks per GPU "
            f"and share='task' makes each of them load its own copy of the model on it "
            f"({tasks} copies per GPU); share='executor' (or 'auto') loads one per GPU and "
            "batches the tasks' rows together"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    cores = conf.get("spark.executor.cores", None)
    return Sharing(share, str(conf.get("spark.app.id")), int(cores) if cores else None)
