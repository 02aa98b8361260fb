"""The executors' Python check (python/torchspark/spark/environment.py).

``diagnose`` against the driver's own versions, and two executor interpreters
that are not the driver's, in a subprocess (tests/spark_executor_python_job.py):
a bare virtualenv (no torchspark, no pyarrow) and one that imports a torchspark
and a torch of other versions (test doubles: two version-only packages, and
the driver's real pyarrow so that the probe's mapInArrow task runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow
import pytest
import torch

import torchspark
from torchspark._build_info import TORCH_VERSION
from torchspark.spark.environment import diagnose

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLIC_TORCH = TORCH_VERSION.split("+")[0]


def test_diagnose_accepts_the_driver_versions_with_any_local_tag():
    found = {
        "python": "/x/bin/python",
        "torch": PUBLIC_TORCH + "+cu128",  # a CUDA build of the same release on GPU executors
        "torchspark": torchspark.__version__,
        "built_torch": PUBLIC_TORCH + "+cu128",
    }
    assert diagnose(found) is None


def test_diagnose_names_each_difference_and_the_python():
    found = {
        "python": "/x/bin/python",
        "torch": "2.0.1",
        "torchspark": "0.0.9",
        "built_torch": "2.0.1",
    }
    problem = diagnose(found)
    assert problem.startswith("the executors' Python (/x/bin/python) has ")
    assert f"torch 2.0.1 (the driver's: {PUBLIC_TORCH})" in problem
    assert f"torchspark 0.0.9 (the driver's: {torchspark.__version__})" in problem
    assert f"driver torch {torch.__version__}" in problem
    only_torch = dict(found, torchspark=torchspark.__version__)
    assert "torchspark 0.0.9" not in diagnose(only_torch)
    error = diagnose({"python": "/y/python", "error": "ModuleNotFoundError: No module named 'x'"})
    assert error == (
        "the executors' Python (/y/python) cannot import torchspark: "
        "ModuleNotFoundError: No module named 'x'."
    )


def _venv(path) -> tuple[str, str]:
    """A virtualenv without pip or packages: its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = str(path / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return python, site


@pytest.mark.spark
def test_executors_with_another_python_fail_before_the_job(tmp_path):
    """PYSPARK_PYTHON names (1) a bare virtualenv, (2) one whose torch and
    torchspark are other releases: predict raises on the driver after the
    check's single task, naming that Python, what differs and the fix."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark")
    bare, _ = _venv(tmp_path / "bare")
    other, site = _venv(tmp_path / "other")
    os.symlink(os.path.dirname(pyarrow.__file__), os.path.join(site, "pyarrow"))
    for package, files in {
        "torch": {"__init__.py": '__version__ = "2.0.1"\n'},
        "torchspark": {
            "__init__.py": '__version__ = "0.0.9"\n',
            "_build_info.py": 'TORCH_VERSION = "2.0.1"\n',
        },
    }.items():
        os.makedirs(os.path.join(site, package))
        for name, text in files.items():
            with open(os.path.join(site, package, name), "w") as f:
                f.write(text)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYTHONPATH")}
    script = os.path.join(HERE, "spark_executor_python_job.py")
    job = subprocess.run(
        [sys.executable, script, str(tmp_path), bare, other],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr.decode(errors="replace")[-4000:]
    first, second = json.loads((tmp_path / "result.json").read_text())
    for r in (first, second):
        assert r["error"] is not None, r
        assert r["error"].startswith("RuntimeError: torchspark: the executors' Python"), r
        assert f"({r['python']})" in r["error"]
        assert "python -m torchspark pack-env" in r["error"]
        assert "spark.pyspark.python" in r["error"] and "PYSPARK_PYTHON" in r["error"]
        assert r["tasks"] == 1  # the check's task: no probe batch, no scoring job
    # The bare one cannot even start the probe's Arrow worker: pyarrow is missing.
    assert "No module named 'pyarrow'" in first["error"], first["error"]
    assert f"has torch 2.0.1 (the driver's: {PUBLIC_TORCH})" in second["error"], second["error"]
    assert f"torchspark 0.0.9 (the driver's: {torchspark.__version__})" in second["error"]
