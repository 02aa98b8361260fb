"""A Spark job script run in the background while other tests run (tests/spark_*_job.py).

A SparkContext per process, hence a subprocess: ``start`` launches
``script WORKDIR`` in its own process group (the JVMs it starts go with it)
when the module's test that reads it is selected (``fixture`` makes the
module fixture that calls it); ``result`` waits for it (bounded), kills the
group if it overruns, and returns the ``result.json`` it wrote, failing with
the end of its log otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def start(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    script: str,
    test: str,
) -> Iterator[dict[str, Any] | None]:
    """For a module-scoped fixture: yields the running job (None when ``test``
    is not selected or there is no Java), and stops it at the module's end."""
    selected = any(item.name == test for item in request.session.items)
    if not selected or (shutil.which("java") is None and not os.environ.get("JAVA_HOME")):
        yield None
        return
    workdir = tmp_path_factory.mktemp(os.path.splitext(script)[0])
    log = open(workdir / "job.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, script), str(workdir)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the JVMs it starts go with it
    )
    job = {"proc": proc, "workdir": workdir, "started": time.monotonic()}
    try:
        yield job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def fixture(name: str, script: str, test: str) -> Any:
    """The module-scoped autouse fixture ``name`` that runs :func:`start` for
    ``script`` when its module starts; a test module binds it to that name:
    ``fault_job = background_job.fixture("fault_job", "spark_fault_job.py", FAULT_TEST)``."""

    @pytest.fixture(scope="module", autouse=True, name=name)
    def job(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[dict[str, Any] | None]:
        yield from start(request, tmp_path_factory, script, test)

    return job


def result(job: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """The job's result.json once it exits (within ``timeout`` seconds of its start)."""
    if job is None:
        pytest.skip("no Java runtime for Spark")
    proc, workdir = job["proc"], job["workdir"]
    left = timeout - (time.monotonic() - job["started"])
    try:
        proc.wait(timeout=max(left, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = (workdir / "job.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-6000:]
    return json.loads((workdir / "result.json").read_text())
