"""The tabular task: an MLP over a feature vector and four scalar columns.

``python -m torchspark.demo --task tabular`` (part of the default run). It

1. writes a Parquet dataset of ``--rows`` rows (an ``id``, a ``features``
   column of ``array<float>[64]`` and four scalar columns);
2. exports the bundled model to TorchScript and to an AOTInductor package
   (the AOT compile is cached between runs) and picks ``--format``;
3. runs ``torchspark.predict`` over the dataset on the demo's SparkSession,
   writing the predictions to Parquet (``--output``);
4. runs the same job with Spark's ``predict_batch_udf`` for comparison;
5. checks every prediction against eager PyTorch on the same rows and prints
   rows, wall time, rows/s, latency percentiles and the comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch

import torchspark

from ._common import TaskResult, step, stopwatch

__all__ = ["DEFAULT_ROWS", "DemoModel", "bundled_model", "export_model", "make_dataset", "run"]

DEFAULT_ROWS = 1_000_000
FEATURES = 64  # width of the array<float> feature vector
SCALARS = ["age", "amount", "score", "count"]  # scalar feature columns


class DemoModel(torch.nn.Module):
    """The bundled model: an MLP over the feature vector and the scalar columns."""

    def __init__(self, features: int = FEATURES, scalars: int = len(SCALARS)) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features + scalars, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 1),
        )

    def forward(self, features: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([features, scalars], dim=1))).squeeze(1)


def bundled_model() -> DemoModel:
    """The demo model with fixed weights (seeded, so every run scores the same)."""
    torch.manual_seed(0)
    return DemoModel().eval()


def make_dataset(path: str, rows: int, batch_rows: int = 65536, seed: int = 0) -> None:
    """Write the demo dataset to ``path`` as Parquet, ``batch_rows`` per row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("id", pa.int64()), ("features", pa.list_(pa.float32()))]
        + [(name, pa.float64() if name != "count" else pa.int32()) for name in SCALARS]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            values = rng.standard_normal(n * FEATURES, dtype=np.float32)
            offsets = np.arange(0, (n + 1) * FEATURES, FEATURES, dtype=np.int32)
            columns = [
                pa.array(np.arange(start, start + n, dtype=np.int64)),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                pa.array(rng.uniform(18, 90, n)),
                pa.array(rng.lognormal(3, 1, n)),
                pa.array(rng.standard_normal(n)),
                pa.array(rng.integers(0, 100, n, dtype=np.int32)),
            ]
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _examples() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, FEATURES), torch.randn(8, len(SCALARS))


def export_model(workdir: str, model_format: str) -> str:
    """The bundled model as ``model_format`` (``"torchscript"`` or ``"aoti"``).

    TorchScript is exported into ``workdir``. The AOTInductor package takes a
    C++ compile (tens of seconds), so it is cached under
    ``~/.cache/torchspark/demo`` by torch version and weights.
    """
    model = bundled_model()
    if model_format == "torchscript":
        return torchspark.export(model, _examples(), os.path.join(workdir, "demo_model.pt"))
    digest = hashlib.sha256(torch.__version__.encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    cache = os.path.join(os.path.expanduser("~"), ".cache", "torchspark", "demo")
    path = os.path.join(cache, f"demo_model-{digest.hexdigest()[:16]}.pt2")
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        partial = f"{path}.{os.getpid()}.tmp.pt2"
        torchspark.export(model, _examples(), partial, format="aoti")
        os.replace(partial, path)
    return path


def _predict_batch_udf_job(df: object, output: str, batch_size: int) -> None:
    """The same job written with Spark's own ``predict_batch_udf``, as its docs say."""
    import numpy as np
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    def make_predict_fn():
        model = bundled_model()

        def predict(features: np.ndarray, scalars: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = model(torch.from_numpy(features), torch.from_numpy(scalars))
            return out.numpy()

        return predict

    udf = predict_batch_udf(
        make_predict_fn,
        return_type=FloatType(),
        batch_size=batch_size,
        input_tensor_shapes=[[FEATURES], [len(SCALARS)]],
    )
    scalars = F.array(*[F.col(c).cast("float") for c in SCALARS])
    scored = df.select("id", udf("features", scalars).alias("prediction"))
    scored.write.mode("overwrite").parquet(output)


def _check(input_path: str, output_path: str) -> tuple[int, float]:
    """Rows and the largest difference from eager PyTorch, joined on id."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data = pq.read_table(input_path)
    out = pq.read_table(output_path).sort_by("id")
    ids = out.column("id").to_numpy()
    if len(ids) != data.num_rows or not np.array_equal(ids, np.arange(data.num_rows)):
        return len(ids), float("inf")
    features = torch.from_numpy(
        pc.list_flatten(data.column("features")).to_numpy().reshape(data.num_rows, FEATURES).copy()
    )
    scalars = torch.stack(
        [torch.from_numpy(data.column(c).to_numpy().copy()).float() for c in SCALARS], dim=1
    )
    with torch.inference_mode():
        expected = bundled_model()(features, scalars).numpy()
    got = out.column("prediction").to_numpy()
    return len(ids), float(np.abs(got - expected).max()) if len(ids) else 0.0


def run(spark: object, args: argparse.Namespace, workdir: str) -> TaskResult:
    """The tabular task on ``spark``: ``args.rows`` rows, ``args.format``, ``args.output``."""
    rows = DEFAULT_ROWS if args.rows is None else args.rows
    input_path = os.path.join(workdir, "input.parquet")
    output_path = args.output or os.path.join(workdir, "predictions.parquet")
    baseline_path = os.path.join(workdir, "predictions_predict_batch_udf.parquet")

    with stopwatch() as t:
        make_dataset(input_path, rows)
    step(f"[tabular 1/5] generated {rows:,} rows -> {input_path} ({t[0]:.1f} s)")

    with stopwatch() as t:
        torchscript = export_model(workdir, "torchscript")
        aoti = export_model(workdir, "aoti")
    model = torchscript if args.format == "torchscript" else aoti
    step(
        f"[tabular 2/5] exported the bundled model: TorchScript {torchscript}, AOTInductor "
        f"{aoti} ({t[0]:.1f} s); using {args.format}"
    )

    step("[tabular 3/5] warming up the Python workers (a small job for each method)")
    df = spark.read.parquet(input_path)
    # Python workers are started (and import torch) by the first job that
    # needs them and then reused: warm both methods up so neither timing
    # below pays for it.
    sample = df.limit(2000).repartition(spark.sparkContext.defaultParallelism)
    inputs = {"features": "features", "scalars": SCALARS}
    warm = torchspark.predict(sample, model, inputs=inputs, keep=["id"])
    warm.write.format("noop").mode("overwrite").save()
    if not args.no_compare:
        _predict_batch_udf_job(sample, baseline_path, args.batch_size or 10000)
    step(f"[tabular 4/5] torchspark.predict -> {output_path}")
    with stopwatch() as t:
        scored = torchspark.predict(
            df,
            model,
            inputs=inputs,
            keep=["id"],
            batch_size=args.batch_size,
        )
        scored.write.mode("overwrite").parquet(output_path)
    wall = t[0]
    report = torchspark.last_report()

    baseline_wall = None
    if not args.no_compare:
        step(f"[tabular 5/5] the same job with predict_batch_udf -> {baseline_path}")
        with stopwatch() as t:
            _predict_batch_udf_job(df, baseline_path, args.batch_size or 10000)
        baseline_wall = t[0]

    got_rows, error = _check(input_path, output_path)
    rate = got_rows / wall if wall > 0 else float("inf")
    print()
    print(f"rows        {got_rows:,}")
    print(f"wall        {wall:.2f} s (the Spark job: read, score, write Parquet; after warm-up)")
    print(f"throughput  {rate:,.0f} rows/s")
    if report is not None:
        print(
            f"latency     p50 {report.p50_ms:.1f} ms, p90 {report.p90_ms:.1f} ms, "
            f"p99 {report.p99_ms:.1f} ms per Arrow batch ({report.arrow_batches} batches, "
            f"{report.model_calls} model calls, {report.tasks} tasks)"
        )
        print(f"model       {', '.join(report.models)} on {', '.join(report.devices)}")
    if baseline_wall is not None:
        base_rows, base_error = _check(input_path, baseline_path)
        print(
            f"predict_batch_udf  {baseline_wall:.2f} s ({base_rows / baseline_wall:,.0f} rows/s): "
            f"torchspark is {baseline_wall / wall:.2f}x its speed"
            + ("" if base_error < 1e-5 else f" (its predictions differ by {base_error:.3g})")
        )
    print(f"predictions {output_path}" + ("" if args.workdir or args.output else " (temp dir)"))
    ok = got_rows == rows and error <= 1e-5
    if ok:
        print(f"OK: every prediction matches eager PyTorch (max abs diff {error:.1e})")
    else:
        print(f"FAILED: {got_rows:,} rows, predictions differ from eager PyTorch by {error:.3g}")
    print()
    return TaskResult(
        "tabular",
        rows,
        wall,
        baseline_wall,
        ok,
        gain=(
            "a light model, so the job is mostly Spark's Arrow IPC for both; torchspark "
            "gathers the Arrow columns into the model's input in C++ where predict_batch_udf "
            "goes through pandas and numpy"
        ),
    )
