"""A virtualenv shipped to the executors with ``spark.archives``, run by tests/test_pack_env.py.

``python spark_packed_env_job.py WORKDIR WHEEL``:

1. builds a small virtualenv (``WORKDIR/venv``) from the torchspark wheel
   WHEEL and its runtime dependencies only, with the Docker image's install
   step (deploy/docker/install.sh), as a user's environment would be (the test
   suite's own is 2.7 GB: packing it takes minutes, see benchmarks/RESULTS.md);
2. runs that environment's ``python -m torchspark pack-env``
   and reads the ``spark-submit`` flags it prints;
3. moves the virtualenv away, so that nothing but the archive can serve the
   executors;
4. runs tests/spark_packed_env_driver.py with ``spark-submit`` on
   ``local-cluster[2,1,1024]`` with those flags, without ``PYSPARK_PYTHON``
   or ``PYTHONPATH`` in its environment (the driver runs this interpreter,
   ``spark.pyspark.driver.python``).

Writes ``WORKDIR/result.json``: the driver's findings plus what pack-env
printed, the archive's size and each step's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from local_submit import submit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(workdir: str, wheel: str) -> dict:
    result: dict = {"seconds": {}}
    started = time.monotonic()

    def mark(step: str) -> None:
        result["seconds"][step] = round(time.monotonic() - started, 1)

    venv = os.path.join(workdir, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    # The image's install step (deploy/docker/install.sh), then venv-pack:
    # pack-env runs in the environment it packs.
    install = os.path.join(ROOT, "deploy", "docker", "install.sh")
    subprocess.run(["bash", install, wheel, python], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "venv-pack"], check=True)
    result["venv"] = venv
    mark("venv")

    archive = os.path.join(workdir, "env.tar.gz")
    packed = subprocess.run(
        [python, "-m", "torchspark", "pack-env", "-o", archive],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert packed.returncode == 0, packed.stderr
    result["pack_env_output"] = packed.stdout
    result["archive_bytes"] = os.path.getsize(archive)
    mark("pack")
    # Out of the way (a rename: deleting 1 GB is slow): a path into it found
    # anywhere in the executors would no longer exist.
    os.rename(venv, venv + "-moved")

    # The cluster-mode line; the driver here runs this interpreter instead of
    # the environment's (client mode: spark.pyspark.driver.python).
    submit_line = next(
        line.strip()
        for line in packed.stdout.splitlines()
        if line.strip().startswith("spark-submit --archives") and "driver.python" not in line
    )
    flags = submit_line.split()[1:-1]  # between "spark-submit" and "job.py"
    result["flags"] = flags
    job = submit(
        workdir,
        [*flags, os.path.join(HERE, "spark_packed_env_driver.py"), workdir],
        conf={"spark.pyspark.driver.python": sys.executable},
    )
    assert job.returncode == 0, job.stderr[-6000:]
    mark("submit")
    with open(os.path.join(workdir, "driver.json")) as f:
        result.update(json.load(f))
    result["spark_home"] = os.path.join(workdir, "spark_home")
    return result


if __name__ == "__main__":
    workdir = os.path.abspath(sys.argv[1])
    out = main(workdir, os.path.abspath(sys.argv[2]))
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
