"""Score a Parquet dataset with a PyTorch model and write the predictions as Parquet.

The job that deploy/k8s/sparkapplication.yaml runs on Kubernetes; the same file
runs under ``spark-submit`` on YARN, a standalone cluster or ``local-cluster``
(tests/test_deploy.py runs it there and checks its output against eager
PyTorch)::

    spark-submit --master local-cluster[2,1,1024] deploy/k8s/score_job.py \\
        --model model.pt --input in.parquet --output scored --inputs features --keep id

``--model``: a file on the driver (shipped to the executors) or a URI each
executor host fetches once (``s3://``, ``hdfs://``, ``file://``...).
``--inputs``: the model's input columns, comma-separated. ``--keep``: input
columns copied to the output (default: all). The output is written with
Spark's Parquet writer (``--mode``: errorifexists, overwrite); its
committer makes a task's files visible once, so a retried task never
duplicates rows. One line of the run's report is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file or URI")
    parser.add_argument("--input", required=True, help="Parquet dataset to score")
    parser.add_argument("--output", required=True, help="where the Parquet output goes")
    parser.add_argument("--inputs", required=True, help="input columns, comma-separated")
    parser.add_argument("--keep", default=None, help="columns to keep, comma-separated")
    parser.add_argument("--output-column", default="prediction")
    parser.add_argument("--mode", default="errorifexists", choices=["errorifexists", "overwrite"])
    parser.add_argument("--sha256", default=None, help="expected sha256 of the model file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pyspark.sql import SparkSession

    import torchspark

    spark = SparkSession.builder.appName("torchspark-score").getOrCreate()
    try:
        df = spark.read.parquet(args.input)
        columns = args.inputs.split(",")
        scored = torchspark.predict(
            df,
            args.model,
            inputs=columns[0] if len(columns) == 1 else columns,
            output=args.output_column,
            keep=args.keep.split(",") if args.keep else None,
            sha256=args.sha256,
        )
        scored.write.mode(args.mode).parquet(args.output)
        report = torchspark.last_report()
        print(
            f"score_job: {report.rows} rows in {report.tasks} tasks scored with {args.model}"
            f" into {args.output}",
            flush=True,
        )
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
