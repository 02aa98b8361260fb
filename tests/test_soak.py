"""Soak: a long predict job (10,000 Arrow batches) and 100 short jobs in one
session, with one engine per task and with one engine process per executor
(``share="executor"``); the Python workers' and the engine's memory, threads
and open files stay flat.

A sampler on the driver reads, every 0.1 s, every process of Spark's Python
worker daemon (its command line names ``pyspark.daemon``: the daemon and the
workers it forks) and every shared engine process
(``torchspark.spark.shared.server``) from /proc: resident memory, threads,
open file descriptors. ``growth`` compares the last quarter of a phase's
samples with the quarter after its warm-up. The negative control runs the same
measurement over a mapInArrow function (a test double defined in the test)
that holds 32 KiB per Arrow batch and an open file per ten for as long as its
task runs: the check must catch it.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from models import FEATURES, ModelFiles

import torchspark

pytest.importorskip("pyspark.sql")
pytestmark = [pytest.mark.spark, pytest.mark.slow]

BATCHES = 10_000
ROWS_PER_BATCH = 50
SHORT_JOBS = 100


WATCHED = (b"pyspark.daemon", b"torchspark.spark.shared.server")


def _worker_pids() -> list[int]:
    """Spark's Python workers and the shared engines (see the module's docstring)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read()
                if any(name in args for name in WATCHED):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _reading(pid: int) -> tuple[int, int, int] | None:
    """(RSS bytes, threads, open fds) of ``pid``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"]), fds


class Sampler:
    """Totals over the Python worker processes, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[tuple[int, int, int, int]] = []  # rss, threads, fds, processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            readings = [r for r in map(_reading, _worker_pids()) if r is not None]
            if readings:
                rss, threads, fds = (sum(c) for c in zip(*readings, strict=True))
                self.samples.append((rss, threads, fds, len(readings)))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def growth(samples: list[tuple[int, int, int, int]]) -> dict[str, float]:
    """Last quarter's maxima minus those of the quarter after the first fifth
    (warm-up: model loads, engines, Arrow pools), per measure."""
    assert len(samples) >= 20, f"only {len(samples)} samples"
    n = len(samples)
    early = samples[n // 5 : n // 5 + n // 4]
    late = samples[-(n // 4) :]

    def peak(window, i):
        return max(s[i] for s in window)

    return {
        "rss_mb": (peak(late, 0) - peak(early, 0)) / 2**20,
        "threads": peak(late, 1) - peak(early, 1),
        "fds": peak(late, 2) - peak(early, 2),
        "processes": peak(late, 3) - peak(early, 3),
    }


def flat(change: dict[str, float]) -> bool:
    return (
        change["rss_mb"] < 48
        and change["threads"] <= 2
        and change["fds"] <= 4
        and change["processes"] <= 0
    )


@pytest.fixture(scope="module")
def soak_models(tmp_path_factory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("soak_models"))


@pytest.fixture
def small_batches(spark) -> Iterator[None]:
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    spark.conf.set(key, str(ROWS_PER_BATCH))
    try:
        yield
    finally:
        spark.conf.unset(key)


def frame(spark: Any, rows: int, partitions: int) -> Any:
    return spark.range(0, rows, 1, partitions).selectExpr(
        "id",
        f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id + i) as float)) as features",
    )


def measured(run: Callable[[], None]) -> dict[str, float]:
    with Sampler() as sampler:
        run()
    change = growth(sampler.samples)
    processes = max(s[3] for s in sampler.samples)
    # In -rP output (RELIABILITY.md's figures).
    print(f"{run.__name__}: {len(sampler.samples)} samples, {processes} processes, growth {change}")
    return change


@pytest.mark.parametrize("share", ["task", "executor"])
def test_long_job_and_many_short_jobs_stay_flat(spark, soak_models, small_batches, share):
    path = soak_models.path("mlp")
    temp_before = {e for e in os.listdir(tempfile.gettempdir()) if "torchspark" in e}
    long_df = frame(spark, BATCHES * ROWS_PER_BATCH, 2)

    def scored(df: Any) -> None:
        torchspark.predict(df, path, inputs="features", keep=["id"], share=share).write.format(
            "noop"
        ).mode("overwrite").save()
        assert {r["share"] for r in torchspark.last_report().task_records} == {share}

    def long_job() -> None:
        scored(long_df)

    long_job()  # warm: workers, engines, the probe
    change = measured(long_job)
    report = torchspark.last_report()
    assert report.arrow_batches == BATCHES and report.rows == BATCHES * ROWS_PER_BATCH
    assert flat(change), change

    short_df = frame(spark, 2000, 2)

    def short_jobs() -> None:
        for _ in range(SHORT_JOBS):
            scored(short_df)

    change = measured(short_jobs)
    assert torchspark.last_report().rows == 2000
    assert flat(change), change
    # Nothing of ours left in the temp directory.
    temp_after = {e for e in os.listdir(tempfile.gettempdir()) if "torchspark" in e}
    assert temp_after <= temp_before, temp_after - temp_before


def test_the_measurement_catches_a_leak(spark, small_batches):
    df = frame(spark, 4000 * ROWS_PER_BATCH, 2)

    def leaking(batches: Iterator[Any]) -> Iterator[Any]:
        """The negative control (pickled by value to the workers): holds 32 KiB
        per Arrow batch and an open file per 10 for as long as its task runs."""
        kept: list[Any] = []
        try:
            for i, batch in enumerate(batches):
                kept.append(bytearray(32 << 10))
                if i % 10 == 0:
                    kept.append(open(os.devnull, "rb"))  # noqa: SIM115
                time.sleep(0.002)  # long enough a task for the sampler to watch it grow
                yield batch
        finally:
            for item in kept:
                if hasattr(item, "close"):
                    item.close()

    def job() -> None:
        df.mapInArrow(leaking, df.schema).write.format("noop").mode("overwrite").save()

    change = measured(job)
    assert not flat(change), change
    assert change["fds"] > 100 and change["rss_mb"] > 48, change
