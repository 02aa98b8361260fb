"""The executors' Python: can it import torchspark? Checked once per Spark application.

The driver's checks (columns, model load, probe batch) all run in the driver's
Python. Spark's Python workers run another interpreter, the one
``spark.pyspark.python`` / ``PYSPARK_PYTHON`` names (or ``python3``); where
that one lacks torchspark, every task would fail with ``No module named
'torchspark'`` after the driver said all was well. One tiny task (an
``import torchspark`` on an executor) finds out first.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_checked: set[str] = set()  # applications whose executors import torchspark
_lock = threading.Lock()


def _probe() -> Callable[[Iterable[Any]], Iterator[tuple[str, str | None]]]:
    # A nested function: cloudpickle sends it by value, so the executor can run
    # it without importing torchspark (which is what it checks).
    def probe(_: Iterable[Any]) -> Iterator[tuple[str, str | None]]:
        import sys

        try:
            import torchspark  # noqa: F401
        except BaseException as e:
            yield sys.executable, f"{type(e).__name__}: {e}"
            return
        yield sys.executable, None

    return probe


def check_executor_python(spark: Any) -> None:
    """Raise, before any job of ours, if the executors' Python cannot import
    torchspark. One single-task job per application (cached); skipped under
    Spark Connect (no SparkContext: the server's environment is its own)."""
    try:
        sc = spark.sparkContext
        app = sc.applicationId
    except Exception:
        return
    with _lock:
        if app in _checked:
            return
    configured = sc.getConf().get("spark.pyspark.python", None) or getattr(sc, "pythonExec", None)
    try:
        python, error = sc.parallelize([0], 1).mapPartitions(_probe()).collect()[0]
    except Exception as e:  # the worker did not even start
        python, error = configured or "python3", _first_line(str(e))
    if error is not None:
        raise RuntimeError(
            f"torchspark: the executors' Python ({python}) cannot import torchspark: {error}. "
            f"The driver runs {sys.executable}. Point Spark's Python workers at an environment "
            "with torchspark (and the same torch): set spark.pyspark.python (or the "
            "PYSPARK_PYTHON environment variable, before the SparkSession starts) to its "
            "interpreter, or ship one with the job: spark.archives=env.tar.gz#env and "
            "spark.pyspark.python=./env/bin/python (an archive from venv-pack or conda-pack)."
        )
    with _lock:
        _checked.add(app)


def _first_line(message: str) -> str:
    for line in message.splitlines():
        if "Error" in line or "Exception" in line:
            return line.strip()[:500]
    return message.strip()[:500]
