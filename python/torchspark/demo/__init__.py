"""The torchspark demo: score generated datasets on a local Spark with locally built models.

Run it with ``python -m torchspark.demo`` (the README's first command does the
set-up too). Each task writes its dataset to Parquet, builds and exports its
model, scores the dataset with ``torchspark.predict`` and with Spark's
``predict_batch_udf`` (both after a warm-up), checks every prediction against
an eager PyTorch reference in this process, and prints its figures; the run
ends with one table of rows/s per task.

Tasks (``--task``, default ``all``: tabular, text, then image):

* ``tabular`` (:mod:`torchspark.demo.tabular`): an MLP over an
  ``array<float>[64]`` column and four scalar columns, 1,000,000 rows.
* ``text`` (:mod:`torchspark.demo.text`): sentence embeddings with a BERT-class
  encoder (random weights, built with ``transformers``) and a WordPiece
  tokenizer trained here, over 20,000 generated sentences of skewed lengths.
* ``image`` (:mod:`torchspark.demo.image`): image classification with a
  ResNet-18 (random weights, written in plain PyTorch) over 1,000 JPEGs of
  200-800 pixels a side, decoded and resized inside the engine.

Nothing is downloaded: data, tokenizer and model weights are made locally
from fixed seeds. Spark's progress bar shows each job while it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

import torchspark

from ._common import TaskResult, spark_session, step, table
from .tabular import DemoModel, bundled_model, export_model, make_dataset

__all__ = ["DemoModel", "bundled_model", "export_model", "main", "make_dataset"]

TASKS = ("tabular", "text", "image")
_ALL = ("tabular", "text", "image")  # what --task all runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchspark.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--task", choices=(*TASKS, "all"), default="all", help="what to score (default: all)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows to generate for each task run (default: tabular 1,000,000, text 20,000, "
        "image 1,000)",
    )
    parser.add_argument(
        "--format",
        choices=("torchscript", "aoti"),
        default="torchscript",
        help="tabular model format",
    )
    parser.add_argument("--output", default=None, help="tabular predictions Parquet directory")
    parser.add_argument("--text-output", default=None, help="text predictions Parquet directory")
    parser.add_argument(
        "--text-model",
        choices=("small", "minilm"),
        default="small",
        help="text encoder size: small (2 layers, hidden 128; default) or minilm (6 layers, "
        "hidden 384, as all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tabular rows per model call (default: Spark's Arrow batch size, 10000)",
    )
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the predict_batch_udf comparison"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.rows is not None and args.rows < 0) or (
        args.batch_size is not None and args.batch_size <= 0
    ):
        parser.error("--rows must be >= 0 and --batch-size > 0")
    tasks = _ALL if args.task == "all" else (args.task,)

    workdir = args.workdir or tempfile.mkdtemp(prefix="torchspark-demo-")
    os.makedirs(workdir, exist_ok=True)
    try:
        return _run(args, tasks, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, tasks: tuple[str, ...], workdir: str) -> int:
    from . import image, tabular, text

    runners = {"tabular": tabular.run, "text": text.run, "image": image.run}
    step(
        f"torchspark {torchspark.__version__} demo (torch {torch.__version__}): {', '.join(tasks)}"
    )
    step("starting Spark (local[*]) ...")
    spark = spark_session("torchspark-demo")
    results: list[TaskResult] = []
    try:
        for task in tasks:  # each names its files in workdir after itself
            results.append(runners[task](spark, args, workdir))
    finally:
        spark.stop()
    _summary(results)
    return 0 if all(r.ok for r in results) else 1


def _summary(results: list[TaskResult]) -> None:
    rows = []
    for r in results:
        base = r.baseline_rate
        rows.append(
            [
                r.task,
                f"{r.rows:,}",
                f"{r.torchspark_rate:,.0f}",
                "-" if base is None else f"{base:,.0f}",
                "-" if base is None else f"{r.torchspark_rate / base:.2f}x",
                "OK" if r.ok else "FAILED",
            ]
        )
    print("rows/s per task (each Spark job reads Parquet, scores, writes Parquet; after warm-up)")
    print(
        table(
            [
                "task",
                "rows",
                "torchspark rows/s",
                "predict_batch_udf rows/s",
                "torchspark / pbu",
                "checked",
            ],
            rows,
        )
    )
    for r in results:
        if r.gain and r.baseline_s is not None:
            print(f"{r.task}: {r.gain}.")
