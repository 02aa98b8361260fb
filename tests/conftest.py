"""Shared test set-up: torchspark must be importable (the installed wheel in CI)."""

from __future__ import annotations

import gc
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import op_library
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def test_ops() -> str:
    """The test op library (tests/csrc/test_ops.cpp), loaded into this process:
    ``torch.ops.torchspark_test.simulated_kernel`` and ``.oom_above``. Its path."""
    try:
        return op_library.load()
    except op_library.OpLibraryError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def fast_gc() -> Iterator[None]:
    """For modules that call gc.collect() in most tests: freezing what exists
    before them (torch, pyarrow, ...) makes it cheap. Objects the tests create
    are still collected."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One ``local[2,4]`` SparkSession for the test session: two task slots, and
    up to 4 attempts per task (so a test can kill a Python worker and watch the
    retry). Python workers run this interpreter (``PYSPARK_PYTHON``, read when
    the JVM starts), with torchspark's per-task log lines off."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark")
    env = {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "TORCHSPARK_LOG_LEVEL": "WARNING",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("torchspark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
