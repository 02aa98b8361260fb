"""``spark-submit`` on ``local-cluster[2,1,1024]`` for the job scripts that test
a submitted application (spark_packed_env_job.py, spark_submit_job.py), and
running such a job script from a test.

``submit`` runs pyspark's own ``bin/spark-submit`` from a SPARK_HOME of links
in the job's work directory (spark_cluster_job.spark_home: the executors'
directories land there), with no ``PYSPARK_PYTHON``, ``PYSPARK_DRIVER_PYTHON``
or ``PYTHONPATH`` from this process unless ``env`` sets them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from spark_cluster_job import spark_home

HERE = os.path.dirname(os.path.abspath(__file__))
_NOT_INHERITED = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH")


def submit(
    workdir: str,
    args: Sequence[str],
    conf: Mapping[str, str] = {},
    env: Mapping[str, str] = {},
    timeout: float = 400,
) -> subprocess.CompletedProcess:
    """``spark-submit --master local-cluster[2,1,1024] --conf k=v... ARGS``
    (ARGS: flags, then the application and its arguments), output captured."""
    environment = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    environment.update(env)
    environment["SPARK_HOME"] = spark_home(workdir)
    settings = {
        "spark.executor.memory": "512m",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **conf,
    }
    command = [
        os.path.join(environment["SPARK_HOME"], "bin", "spark-submit"),
        "--master",
        "local-cluster[2,1,1024]",
        *[arg for k, v in settings.items() for arg in ("--conf", f"{k}={v}")],
        *args,
    ]
    return subprocess.run(
        command, env=environment, cwd=workdir, capture_output=True, text=True, timeout=timeout
    )


def run_job(script: str, workdir: Any, *args: str, timeout: float) -> dict:
    """From a test: ``python tests/SCRIPT WORKDIR ARGS...`` (without this
    process's PYSPARK_PYTHON or PYTHONPATH), its ``result.json``; fails with
    the end of its output if it fails; skips without a Java runtime."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark")
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    job = subprocess.run(
        [sys.executable, os.path.join(HERE, script), str(workdir), *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
    with open(os.path.join(workdir, "result.json")) as f:
        return json.load(f)
