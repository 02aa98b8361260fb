"""A resumable write run by its own driver, for tests/test_resume.py to kill mid-job.

``python spark_resume_job.py WORKDIR`` exports :func:`module` to
``WORKDIR/model.pt``, starts a ``local[2]`` SparkSession and runs
``torchspark.predict_to`` over :func:`frame` into ``WORKDIR/scored`` in
chunks of two partitions. The test kills this process group with SIGKILL once
a chunk has committed and a later one is being written, then resumes the job
from its own driver. Run to the end, it writes ``WORKDIR/result.json``.
"""

from __future__ import annotations

import json
import os
import sys

ROWS = 8000
PARTITIONS = 8
CHUNK_PARTITIONS = 2
FEATURES = 8
WIDTH = 128


def module(seed: int = 7):
    """[rows, 8] -> [rows]: six 128-wide tanh layers."""
    import torch

    torch.manual_seed(seed)
    layers = [torch.nn.Linear(FEATURES, WIDTH), torch.nn.Tanh()]
    for _ in range(6):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    layers += [torch.nn.Linear(WIDTH, 1), torch.nn.Flatten(0)]
    return torch.nn.Sequential(*layers).eval()


def frame(spark, changed_id: int | None = None):
    """The input: ids 0..ROWS-1 in PARTITIONS partitions (ids in order, the
    same split in every session), 8 float features each; with ``changed_id``
    that row's features differ."""
    features = f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * 0.37 + i) as float))"
    if changed_id is not None:
        other = f"array_repeat(cast(0.5 as float), {FEATURES})"
        features = f"if(id = {changed_id}, {other}, {features})"
    return spark.range(0, ROWS, 1, PARTITIONS).selectExpr("id", f"{features} AS features")


def main(workdir: str) -> dict:
    import torch
    from pyspark.sql import SparkSession

    import torchspark

    # Exported aside, then renamed: the test reads model.pt as soon as it exists.
    os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
    aside = os.path.join(workdir, "export", "model.pt")
    model = os.path.join(workdir, "model.pt")
    os.replace(torchspark.export(module(), torch.randn(4, FEATURES), aside), model)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("torchspark-resume-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Small Arrow batches: a task's staging file opens at its first batch.
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "250")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    result = torchspark.predict_to(
        frame(spark),
        model,
        os.path.join(workdir, "scored"),
        inputs="features",
        keep=["id"],
        chunk_partitions=CHUNK_PARTITIONS,
        progress=False,
    )
    spark.stop()
    return {"written": result.written, "rows": result.rows}


if __name__ == "__main__":
    from spark_cluster_job import job_environment

    workdir = os.path.abspath(sys.argv[1])
    job_environment(workdir)
    out = main(workdir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
