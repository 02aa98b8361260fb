"""Ray Data benchmark: torchspark's ``map_batches`` class against Ray's documented PyTorch pattern,
and against torchspark on Spark, for the same job on this machine.

Workloads (``spark_bench``'s data and models, made with its seed): ``tabular``
(``--rows``, default 1M, x 64 scalar ``float`` columns, the 64-32-1 MLP +
sigmoid) and ``mlp`` (``array<float>`` of 256, the 256-1024-1024-1 ReLU MLP,
compute-bound; default 200k rows).

Methods (each produces ``id, prediction`` for every row):

* ``ray-docs``: what Ray's docs show for PyTorch batch inference
  ("Working with PyTorch", "End-to-end: offline batch inference"): a class
  whose ``__init__`` loads the model (the eager module, state dict loaded)
  and whose ``__call__`` takes the numpy batch (``batch_format`` default),
  ``torch.from_numpy`` of its columns (``np.column_stack`` of the scalar
  columns, ``np.stack`` of the array column's rows), the model under
  ``torch.inference_mode()``, and returns ``{"id", "prediction"}`` numpy.
* ``ray-torchspark``: ``map_batches(torchspark.ray.Predictor,
  batch_format="pyarrow")`` on the TorchScript export of the same module
  (``torchspark.ray.put`` into the object store), ``keep=["id"]``.
* ``spark-torchspark``: ``torchspark.predict(..., keep=["id"])`` on a
  ``local[2]`` SparkSession (``spark_bench.torchspark_predict``), the data
  read from Parquet, ``repartition``-ed and cached, ending in
  ``write.format("noop")`` (as ``spark_bench``).

Fairness: the Ray methods read the same dataset (``ray.data.from_arrow`` of
the table, ``repartition(--partitions)``, materialized in the object store
before anything is timed), run on ``--actors`` actors (default 2, one CPU
each: Ray sets ``OMP_NUM_THREADS=1``, torchspark sets one intra-op thread
from ``num_cpus``) with the same ``batch_size`` (``--batch-size``, default
10,000 rows, Spark's Arrow batch size), and end in ``materialize()`` (the
outputs in the object store). Spark runs two Python workers with one torch
thread each. A Ray run starts its actors (a Python process each: import
torch, load the model) inside the timed run, as every ``map_batches`` job
does; Spark reuses its Python workers across jobs (and torchspark its
engine), so its runs start warm. The Ray cluster (``ray.init(num_cpus=2)``)
and the SparkSession live side by side; runs are interleaved (A, B, C, then
again) ``--repeats`` times after one untimed warm-up each, which also checks a
handful of ids against eager torch (any difference above 1e-4 stops the
benchmark).

Run from the repository root: ``python benchmarks/ray_bench.py`` (both
workloads, a few minutes on 2 cores), ``--quick`` (small data, one repeat),
``--workloads tabular --methods ray-docs,ray-torchspark``; ``--wait-load 1.0``
waits for a quiet machine first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _bench
import spark_bench
from spark_bench import MODELS, SEED, WORKLOADS, Workload

import torchspark

METHODS = ["ray-docs", "ray-torchspark", "spark-torchspark"]
ROWS = {"tabular": 1_000_000, "mlp": 200_000}
QUICK_ROWS = {"tabular": 100_000, "mlp": 20_000}


class TorchPredictor:
    """Ray's documented pattern: load in ``__init__``, ``torch.from_numpy`` in ``__call__``."""

    def __init__(self, model: str, state: str, kind: str, cols: list[str]) -> None:
        self.model = MODELS[model]()
        self.model.load_state_dict(torch.load(state, weights_only=True))
        self.model.eval()
        self.kind, self.cols = kind, cols

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.kind == "columns":
            x = np.column_stack([batch[c] for c in self.cols])
        else:
            x = np.stack(batch[self.cols[0]]).astype(np.float32, copy=False)
        with torch.inference_mode():
            prediction = self.model(torch.from_numpy(x)).reshape(-1).numpy()
        return {"id": batch["id"], "prediction": prediction}


def ray_methods(ds, wl: Workload, state: str, shipped, args) -> dict[str, Callable]:
    import ray

    from torchspark.ray import Predictor

    compute = ray.data.ActorPoolStrategy(size=args.actors)
    inputs = wl.cols[0] if wl.kind == "dense" else wl.cols

    def docs():
        return ds.map_batches(
            TorchPredictor,
            fn_constructor_kwargs={
                "model": wl.name,
                "state": state,
                "kind": wl.kind,
                "cols": wl.cols,
            },
            batch_size=args.batch_size,
            compute=compute,
        )

    def torchspark_ray():
        return ds.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": shipped,
                "inputs": inputs,
                "keep": ["id"],
                "batch_size": args.batch_size,
            },
            batch_format="pyarrow",
            batch_size=args.batch_size,
            compute=compute,
        )

    return {"ray-docs": docs, "ray-torchspark": torchspark_ray}


def ray_outputs(out) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(out.to_arrow_refs()))


def check(
    name: str, table: pa.Table, rows: int, ids: list[int], expected: dict[int, float]
) -> float:
    """The max |error| of ``table``'s predictions for ``ids``; ``rows`` rows, each id once."""
    import pyarrow.compute as pc

    got = table.filter(pc.is_in(table.column("id"), pa.array(ids)))
    values = dict(
        zip(got.column("id").to_pylist(), got.column("prediction").to_pylist(), strict=True)
    )
    if sorted(got.column("id").to_pylist()) != ids or table.num_rows != rows:
        raise SystemExit(f"{name}: {table.num_rows} rows, ids {sorted(values)}; expected {ids}")
    worst = max(abs(values[i] - expected[i]) for i in ids)
    if worst > 1e-4:
        raise SystemExit(f"{name}: max |error| {worst} against eager torch")
    return worst


def run_workload(spark, wl: Workload, workdir: str, args: argparse.Namespace) -> None:
    import ray

    from torchspark.ray import put

    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)[wl.name]
    t0 = time.perf_counter()
    table = spark_bench.make_table(wl.kind, rows)
    ds = ray.data.from_arrow(table).repartition(args.partitions).materialize()
    df = None
    if spark is not None:
        df = spark_bench.cached_frame(spark, table, os.path.join(workdir, "data.parquet"), args)
    prep_s = time.perf_counter() - t0

    model, state = spark_bench.saved_model(wl.name, workdir)
    ts_path = os.path.join(workdir, f"{wl.name}.pt")
    width = len(wl.cols) if wl.kind == "columns" else spark_bench.DIM
    torchspark.export(model, (torch.randn(4, width),), ts_path)
    shipped = put(ts_path)

    rng = np.random.default_rng(SEED + 1)
    ids = sorted({0, rows - 1, *rng.choice(rows, 6, replace=False).tolist()})
    with torch.inference_mode():
        expected = {
            i: float(model(x).reshape(-1)[0])
            for i, x in zip(ids, spark_bench.reference_inputs(table, wl.kind, ids), strict=True)
        }

    makers = ray_methods(ds, wl, state, shipped, args)
    # The same methods on one batch of rows: what a run costs besides its rows
    # (actors started, model loaded), to tell it from the rows/s past it.
    one = ray.data.from_arrow(table.slice(0, args.batch_size)).materialize()
    starts = ray_methods(one, wl, state, shipped, args)
    cases: list[_bench.Case] = []
    fixed: dict[str, _bench.Case] = {}
    errors = []
    for name in args.methods:
        if name in makers:
            make = makers[name]
            table_out = ray_outputs(make().materialize())  # warm-up and check
            errors.append(f"{name} {check(name, table_out, rows, ids, expected):.1e}")

            def run(make: Callable = makers[name]) -> None:
                make().materialize()

            def start(make: Callable = starts[name]) -> None:
                make().materialize()

            fixed[name] = _bench.Case(f"{name} (1 batch)", start)
        else:  # spark-torchspark
            out = spark_bench.torchspark_predict(df, wl, ts_path, args)
            errors.append(f"{name} {spark_bench.check(name, out, ids, expected):.1e}")

            def run() -> None:
                spark_bench.sink(spark_bench.torchspark_predict(df, wl, ts_path, args))

            run()  # warm-up
        cases.append(_bench.Case(name, run))
    for _ in range(args.repeats):
        for case in [*cases, *fixed.values()]:
            t = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - t)

    print(f"## {wl.name}: {rows:,} rows, {wl.kind} input (data ready in {prep_s:.1f} s)")
    print(f"correct on ids {ids} (max abs error vs eager torch: {', '.join(errors)})\n")
    medians = {case.name: statistics.median(case.times) for case in cases}
    header = ["method", "median s", "min s", "rows/s", "vs ray-docs", "vs ray-torchspark"]
    header += ["1-batch run s", "rows/s past it"]
    lines = []
    for case in cases:
        median = medians[case.name]
        start = statistics.median(fixed[case.name].times) if case.name in fixed else None
        lines.append(
            [
                case.name,
                f"{median:.3f}",
                f"{min(case.times):.3f}",
                f"{rows / median:,.0f}",
                *(
                    _bench.ratio(medians[other] / median) if other in medians else "-"
                    for other in ("ray-docs", "ray-torchspark")
                ),
                f"{start:.3f}" if start is not None else "-",
                f"{(rows - args.batch_size) / (median - start):,.0f}"
                if start is not None and median > start
                else "-",
            ]
        )
    print(_bench.table(header, lines))
    print(
        "(vs X: X's median time / this method's, above 1x is faster than X; 1-batch run: the\n"
        "same method on one batch of rows, median; rows/s past it: the other rows over the\n"
        "time the run took beyond that)\n"
    )


def comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workloads", default="tabular,mlp", type=comma_list, help="of tabular,mlp")
    p.add_argument("--methods", default=METHODS, type=comma_list, help=f"of {','.join(METHODS)}")
    p.add_argument("--rows", type=int, default=None, help="rows (default: per workload)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (3; quick 1)")
    p.add_argument("--quick", action="store_true", help="small data, one repeat")
    p.add_argument("--actors", type=int, default=2, help="Ray actors (one CPU each)")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per map_batches call")
    _bench.spark_run_arguments(p, mrpb=None)
    args = p.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    unknown += [w for w in args.workloads if w not in ROWS]
    if unknown:
        raise SystemExit(f"unknown methods or workloads {unknown}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.rounds = args.repeats  # for _bench.header
    # What spark_bench's helpers read: the Arrow batch is the model batch; no token options.
    args.mrpb, args.max_tokens, args.sort_window = args.batch_size, None, None
    return args


def main() -> None:
    args = parse_args()
    spark_bench.wait_for_load(args.wait_load)
    _bench.header("ray_bench: Ray Data map_batches, and Spark, on this machine", args)
    import ray

    bench_dir = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        # The actors import spark_bench's model classes (pickled by reference).
        runtime_env={"env_vars": {"PYTHONPATH": bench_dir, "TORCHSPARK_LOG_LEVEL": "WARNING"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    spark = spark_bench.start_spark(args) if "spark-torchspark" in args.methods else None
    print(
        f"ray {ray.__version__}: {args.actors} actors x 1 CPU, batch_size {args.batch_size} | "
        f"spark {spark.version + ' local[2]' if spark else '(not run)'} | partitions "
        f"{args.partitions} | repeats {args.repeats} (+1 warm-up) | times: wall s per run\n"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ray_bench_") as workdir:
            for name in args.workloads:
                run_workload(spark, WORKLOADS[name], workdir, args)
    finally:
        if spark is not None:
            spark.stop()
        ray.shutdown()
    _bench.footer()


if __name__ == "__main__":
    main()
