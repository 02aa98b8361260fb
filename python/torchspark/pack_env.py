"""Ship a virtualenv to Spark's executors: ``python -m torchspark pack-env``.

Spark's own mechanism: an archive listed in ``spark.archives`` (``--archives``)
is unpacked into every executor's working directory under the name after ``#``,
and ``spark.pyspark.python=./env/bin/python`` makes the Python workers run its
interpreter. This packs a virtualenv (the current one by default) with
venv-pack, after checking that its Python imports torchspark and torch, and
says which flags to pass.

What it does not ship: the Python interpreter itself (venv-pack keeps the
venv's link to its base Python, so every node needs that Python at the same
path, or ``python_prefix`` where it lives there), and the ``pyspark`` package
(unless asked): the workers import the cluster's own PySpark, which Spark puts
first on their ``PYTHONPATH`` (``$SPARK_HOME/python/lib/pyspark.zip``), so a
shipped copy (~0.5 GB with its jars) would never be imported.

>>> from torchspark.pack_env import pack_env
>>> packed = pack_env("env.tar.gz")  # doctest: +SKIP
>>> packed.submit_args  # doctest: +SKIP
['--archives', 'env.tar.gz#env', '--conf', 'spark.pyspark.python=./env/bin/python']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence

ALIAS = "env"  # the directory the archive is unpacked into on each executor

# Run by the packed environment's own interpreter: what it imports.
_VERSIONS = (
    "import json, sys, torch, torchspark; print(json.dumps({'python': sys.version.split()[0],"
    " 'torch': torch.__version__, 'torchspark': torchspark.__version__}))"
)


@dataclasses.dataclass(frozen=True)
class PackedEnvironment:
    """An archive of a virtualenv for ``spark.archives``, and what it holds."""

    path: str  # the archive (absolute)
    prefix: str  # the virtualenv packed
    base_python: str  # the interpreter its bin/python links to: needed on every node
    versions: dict[str, str]  # python, torch, torchspark, as the env's Python imports them
    size: int  # bytes

    @property
    def spark_conf(self) -> dict[str, str]:
        """The Spark configuration that ships it: ``{"spark.archives": ..., ...}``."""
        return {
            "spark.archives": f"{self.path}#{ALIAS}",
            "spark.pyspark.python": f"./{ALIAS}/bin/python",
        }

    @property
    def submit_args(self) -> list[str]:
        """The same as ``spark-submit`` arguments."""
        conf = self.spark_conf
        return [
            "--archives",
            conf["spark.archives"],
            "--conf",
            f"spark.pyspark.python={conf['spark.pyspark.python']}",
        ]


def pack_env(
    output: str | os.PathLike[str] = "torchspark-env.tar.gz",
    *,
    prefix: str | os.PathLike[str] | None = None,
    python_prefix: str | None = None,
    compress_level: int = 4,
    include_pyspark: bool = False,
    force: bool = False,
) -> PackedEnvironment:
    """Pack the virtualenv ``prefix`` (default: the running one) into ``output``.

    ``python_prefix``: where the base Python lives on the cluster's nodes if
    not where it lives here (venv-pack rewrites the link). ``compress_level``:
    gzip's 0-9 (levels 1, 4 and 6 of a 1.1 GB environment: 365, 333 and 320
    MB; see benchmarks/RESULTS.md for their times). Raises ``RuntimeError`` naming the
    environment when it is not a virtualenv, its Python cannot import
    torchspark, or venv-pack is missing.
    """
    prefix = os.path.abspath(prefix if prefix is not None else sys.prefix)
    if not os.path.isfile(os.path.join(prefix, "pyvenv.cfg")):
        raise RuntimeError(
            f"pack-env: {prefix} is not a virtualenv (no pyvenv.cfg): pack-env packs one with "
            "venv-pack. Create one (python -m venv ENV; ENV/bin/pip install torchspark) and run "
            "ENV/bin/python -m torchspark pack-env, or pack a conda environment with conda-pack."
        )
    if not 0 <= compress_level <= 9:
        raise ValueError(f"pack-env: compress_level must be 0-9, got {compress_level}")
    try:
        import venv_pack
    except ImportError as e:
        raise RuntimeError(
            "pack-env: venv-pack is not installed in this Python "
            f"({sys.executable}): pip install venv-pack (or torchspark[cluster])"
        ) from e
    python = os.path.join(prefix, "bin", "python")
    check = subprocess.run([python, "-c", _VERSIONS], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(
            f"pack-env: the environment's Python ({python}) cannot import torchspark and "
            f"torch: {last}. Install them there first ({python} -m pip install torchspark)."
        )
    versions = json.loads(check.stdout)
    filters = []
    if not include_pyspark:
        filters = [
            ("exclude", "lib/python*/site-packages/pyspark/*"),
            ("exclude", "lib/python*/site-packages/pyspark-*.dist-info/*"),
        ]
    path = os.path.abspath(output)
    venv_pack.pack(
        prefix=prefix,
        output=path,
        python_prefix=python_prefix,
        compress_level=compress_level,
        force=force,
        filters=filters,
    )
    return PackedEnvironment(
        path=path,
        prefix=prefix,
        base_python=os.path.realpath(python),
        versions=versions,
        size=os.path.getsize(path),
    )


def instructions(packed: PackedEnvironment) -> str:
    """What to tell Spark, as ``python -m torchspark pack-env`` prints it."""
    v = packed.versions
    conf = packed.spark_conf
    args = " ".join(packed.submit_args)
    # In client mode spark.pyspark.python would name the driver's Python too
    # (spark-submit's order: spark.pyspark.driver.python, spark.pyspark.python,
    # then the environment variables): the driver keeps this one.
    driver = os.path.join(packed.prefix, "bin", "python")
    return "\n".join(
        [
            f"packed {packed.prefix} into {packed.path} ({packed.size / 1e6:.0f} MB): "
            f"Python {v['python']}, torch {v['torch']}, torchspark {v['torchspark']}",
            "",
            "spark-submit, cluster deploy mode (YARN, Kubernetes): the driver runs from it too",
            f"  spark-submit {args} job.py",
            "client deploy mode (the driver runs here, with this environment's Python):",
            f"  spark-submit {args} --conf spark.pyspark.driver.python={driver} job.py",
            "a SparkSession started from Python: before it starts,",
            f"  os.environ['PYSPARK_PYTHON'] = '{conf['spark.pyspark.python']}'",
            f"  SparkSession.builder.config('spark.archives', '{conf['spark.archives']}')",
            "",
            f"every node needs the base Python this environment links to: {packed.base_python}"
            " (or pass --python-prefix: where it lives there)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torchspark pack-env [-o torchspark-env.tar.gz] [--prefix ENV] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m torchspark pack-env",
        description="Pack a virtualenv (default: this one) for spark.archives and print the "
        "Spark flags that ship it to the executors.",
    )
    parser.add_argument("-o", "--output", default="torchspark-env.tar.gz")
    parser.add_argument("--prefix", help="the virtualenv to pack (default: this Python's)")
    parser.add_argument(
        "--python-prefix", help="where the base Python lives on the nodes, if elsewhere"
    )
    parser.add_argument("--compress-level", type=int, default=4, help="gzip 0-9 (default 4)")
    parser.add_argument(
        "--include-pyspark", action="store_true", help="keep the pyspark package (not needed)"
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output")
    args = parser.parse_args(argv)
    try:
        packed = pack_env(
            args.output,
            prefix=args.prefix,
            python_prefix=args.python_prefix,
            compress_level=args.compress_level,
            include_pyspark=args.include_pyspark,
            force=args.force,
        )
    except Exception as e:
        print(f"torchspark pack-env: error: {e}", file=sys.stderr)
        return 1
    print(instructions(packed))
    return 0
