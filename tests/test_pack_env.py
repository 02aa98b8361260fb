"""``python -m torchspark pack-env`` (python/torchspark/pack_env.py, __main__.py).

The command table and pack-env's refusals in this process; then the whole
path in a subprocess (tests/spark_packed_env_job.py): a virtualenv built from
the wheel by the Docker image's install step, packed by its own ``python -m
torchspark pack-env``, deleted, and shipped with the flags pack-env printed to
``local-cluster`` executors that score a DataFrame with ``torchspark.predict``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from local_submit import run_job
from pyspark.find_spark_home import _find_spark_home

import torchspark
from torchspark.__main__ import COMMANDS, main
from torchspark.pack_env import PackedEnvironment, pack_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_cli_lists_its_commands_and_refuses_unknown_ones(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m torchspark COMMAND [ARGS]")
    for name in COMMANDS:
        assert f"  {name}  " in out
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchspark: unknown command 'nope'") and "pack-env" in err
    with pytest.raises(SystemExit) as exit_:
        main(["pack-env", "--help"])
    assert exit_.value.code == 0
    assert "--compress-level" in capsys.readouterr().out


def test_pack_env_refuses_what_it_cannot_pack(tmp_path, capsys):
    with pytest.raises(RuntimeError, match=rf"{tmp_path} is not a virtualenv \(no pyvenv.cfg\)"):
        pack_env(tmp_path / "x.tar.gz", prefix=tmp_path)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(RuntimeError, match=r"bare/bin/python\) cannot import torchspark and torch"):
        pack_env(tmp_path / "x.tar.gz", prefix=bare)
    with pytest.raises(ValueError, match="compress_level must be 0-9, got 12"):
        pack_env(tmp_path / "x.tar.gz", prefix=bare, compress_level=12)
    # The command prints the error and exits 1.
    assert main(["pack-env", "--prefix", str(bare), "-o", str(tmp_path / "x.tar.gz")]) == 1
    assert "torchspark pack-env: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.tar.gz").exists()


def test_spark_conf_and_submit_args_name_the_archive():
    packed = PackedEnvironment("/a/env.tar.gz", "/v", "/usr/bin/python3", {}, 1)
    assert packed.spark_conf == {
        "spark.archives": "/a/env.tar.gz#env",
        "spark.pyspark.python": "./env/bin/python",
    }
    assert packed.submit_args == [
        "--archives",
        "/a/env.tar.gz#env",
        "--conf",
        "spark.pyspark.python=./env/bin/python",
    ]


def _wheel() -> str:
    """The wheel of the torchspark this test runs (dist/ as .ci/setup leaves
    it, or $TORCHSPARK_WHEEL_DIR), for this Python."""
    where = os.environ.get("TORCHSPARK_WHEEL_DIR") or os.path.join(ROOT, "dist")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    found = glob.glob(os.path.join(where, f"torchspark-{torchspark.__version__}-{tag}-{tag}-*.whl"))
    if not found:
        message = f"no torchspark {torchspark.__version__} wheel for {tag} in {where} (.ci/setup)"
        if os.environ.get("TORCHSPARK_CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[0]


def _under(path: str, root: str, resolve: bool = True) -> bool:
    """Whether ``path`` is ``root`` or inside it (symbolic links resolved, or not)."""
    normal = os.path.realpath if resolve else os.path.abspath
    path, root = normal(path), normal(root)
    return path == root or path.startswith(root + os.sep)


@pytest.mark.spark
def test_executors_run_only_the_packed_environment(tmp_path):
    wheel = _wheel()
    r = run_job("spark_packed_env_job.py", tmp_path, wheel, timeout=600)
    archive = str(tmp_path / "env.tar.gz")

    # pack-env's own words: what it packed, and the flags the job was submitted with.
    assert r["pack_env_output"].startswith(f"packed {r['venv']} into {archive} (")
    assert f"torchspark {torchspark.__version__}" in r["pack_env_output"]
    client = f"spark.pyspark.python=./env/bin/python --conf spark.pyspark.driver.python={r['venv']}"
    assert client in r["pack_env_output"]
    assert r["flags"] == [
        "--archives",
        f"{archive}#env",
        "--conf",
        "spark.pyspark.python=./env/bin/python",
    ]
    assert not os.path.exists(r["venv"])  # moved before the job: only the archive is left
    assert r["executors"] == 2
    assert r["python_exec"] == "./env/bin/python"  # no PYSPARK_PYTHON from the driver's side
    assert os.path.abspath(r["driver_executable"]) == os.path.abspath(sys.executable)

    # Every Python worker runs an unpacked copy of the archive, one per executor,
    # under the executors' work directories.
    work = os.path.join(r["spark_home"], "work")
    spark_install = _find_spark_home()
    prefixes = set()
    for w in r["workers"]:
        prefix = w["prefix"]
        prefixes.add(prefix)
        assert os.path.basename(prefix) == "env" and _under(prefix, work), w
        # (bin/python links to the base interpreter, as in any virtualenv)
        assert _under(w["executable"], prefix, resolve=False), w
        modules = json.loads(w["modules"])
        for name in ("torch", "torchspark", "pyarrow"):
            assert _under(modules[name], prefix), (name, modules[name])
        # PySpark itself is Spark's (pack-env leaves the pyspark package out).
        assert "/python/lib/pyspark.zip/" in modules["pyspark"], modules["pyspark"]
        # Nothing from the driver's environment but Spark's own files (its
        # python/lib zips and spark-core jar: the Spark install, which a
        # cluster's nodes have of their own).
        for entry in json.loads(w["path"]):
            if any(_under(entry, p) for p in (sys.prefix, r["venv"], r["venv"] + "-moved")):
                assert _under(entry, spark_install) and entry.endswith((".zip", ".jar")), entry
    assert len(prefixes) == 2, prefixes

    # The scoring job on those executors: every id once, equal to eager PyTorch.
    assert r["ids"] is True
    assert r["max_abs_diff"] < 1e-5
    assert len(r["task_pids"]) >= 2
    print(f"\npacked env job: {r['seconds']} s, archive {r['archive_bytes'] / 1e6:.0f} MB")
