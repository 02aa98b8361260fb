"""The executors' Python: does it run the torchspark and torch the driver does?
Checked once per Spark application.

The driver's checks (columns, model load, probe batch) all run in the driver's
Python. Spark's Python workers run another interpreter, the one
``spark.pyspark.python`` / ``PYSPARK_PYTHON`` names (or ``python3``), often on
another machine. Where that one lacks torchspark, or has another torch (whose
C++ ABI the driver's torchspark and the model were not built for), or another
torchspark, every task would fail or behave differently after the driver said
all was well. One tiny task finds out first: a one-row ``mapInArrow`` job (the
DataFrame API, so that it runs under Spark Connect too) that imports torchspark
on an executor and reports the versions it finds.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .._build_info import TORCH_VERSION as _BUILT_TORCH_VERSION

_checked: set[str] = set()  # applications whose executors passed the check
_lock = threading.Lock()

# What the probe reports, one row of strings: the executor's interpreter, the
# versions it imports (built_torch: the torch its torchspark was built with), or
# the error importing them.
PROBE_FIELDS = ("python", "prefix", "torch", "torchspark", "built_torch", "error")
PROBE_SCHEMA = ", ".join(f"{name} string" for name in PROBE_FIELDS)

FIX = (
    "Ship the driver's environment with the job: `python -m torchspark pack-env` packs it "
    "(venv-pack) and prints the flags (spark.archives=torchspark-env.tar.gz#env, "
    "spark.pyspark.python=./env/bin/python); or point spark.pyspark.python (PYSPARK_PYTHON, "
    "set before the SparkSession starts) at an interpreter that has them."
)


def _probe() -> Callable[[Iterable[Any]], Iterator[Any]]:
    # A nested function: cloudpickle sends it by value, so the executor can run
    # it without importing torchspark (which is what it checks).
    def probe(batches: Iterable[Any]) -> Iterator[Any]:
        import sys

        import pyarrow as pa

        for _ in batches:
            pass
        row = {"python": sys.executable, "prefix": sys.prefix}
        try:
            import torch

            row["torch"] = torch.__version__
            import torchspark
            from torchspark._build_info import TORCH_VERSION

            row["torchspark"] = torchspark.__version__
            row["built_torch"] = TORCH_VERSION
        except BaseException as e:
            row["error"] = f"{type(e).__name__}: {e}"
        schema = pa.schema([(name, pa.string()) for name in PROBE_FIELDS])
        yield pa.RecordBatch.from_pylist([row], schema=schema)

    return probe


def check_executor_python(spark: Any) -> None:
    """Raise, before any job of ours, if the executors' Python cannot import
    torchspark, or imports another torch or torchspark than the driver's. One
    single-task job per application (cached once it passes)."""
    app = _application(spark)
    with _lock:
        if app in _checked:
            return
    try:
        found = spark.range(1, numPartitions=1).mapInArrow(_probe(), PROBE_SCHEMA).collect()[0]
        found = found.asDict()
    except Exception as e:  # the Python worker did not even start
        found = {"python": _configured_python(spark), "error": _first_line(str(e))}
    problem = diagnose(found)
    if problem is not None:
        raise RuntimeError(f"torchspark: {problem} The driver runs {sys.executable}. {FIX}")
    with _lock:
        _checked.add(app)


def diagnose(found: dict[str, Any]) -> str | None:
    """What is wrong with an executor's Python, from the probe's row (None: nothing).

    >>> from torchspark.spark.environment import diagnose
    >>> diagnose({"python": "/env/bin/python", "error": "ModuleNotFoundError: x"})
    "the executors' Python (/env/bin/python) cannot import torchspark: ModuleNotFoundError: x."
    """
    python = found.get("python") or "python3"
    if found.get("error"):
        return f"the executors' Python ({python}) cannot import torchspark: {found['error']}."
    driver = {
        "torch": _public(_BUILT_TORCH_VERSION),
        "torchspark": _driver_torchspark_version(),
    }
    theirs = {
        "torch": _public(found.get("torch") or "none"),
        "torchspark": found.get("torchspark") or "none",
    }
    if theirs == driver:
        return None
    differ = [
        f"{k} {theirs[k]} (the driver's: {driver[k]})" for k in driver if theirs[k] != driver[k]
    ]
    return (
        f"the executors' Python ({python}) has {', '.join(differ)}; the driver's torchspark "
        f"{driver['torchspark']} and its models were built for torch {driver['torch']} "
        f"(driver torch {torch.__version__}), and LibTorch's C++ ABI changes between releases."
    )


def _application(spark: Any) -> str:
    # spark.app.id: the same key in a classic session and under Spark Connect.
    try:
        return str(spark.conf.get("spark.app.id"))
    except Exception:
        return str(id(spark))


def _configured_python(spark: Any) -> str:
    try:
        return str(spark.sparkContext.pythonExec)
    except Exception:  # Spark Connect: the server's setting, if it shows it
        unknown = "the Spark Connect server's PYSPARK_PYTHON, else python3"
        try:
            return str(spark.conf.get("spark.pyspark.python", None) or unknown)
        except Exception:
            return unknown


def _driver_torchspark_version() -> str:
    import torchspark

    return torchspark.__version__


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def _first_line(message: str) -> str:
    for line in message.splitlines():
        if "Error" in line or "Exception" in line:
            return line.strip()[:500]
    return message.strip()[:500]
