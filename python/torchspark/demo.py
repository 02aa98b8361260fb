"""The torchspark demo: score a generated Parquet dataset with a bundled model.

Run it with ``python -m torchspark.demo`` (the README's first command does the
set-up too). It writes a Parquet file of ``--rows`` rows (an ``id``, a
``features`` column of ``array<float>[D]`` and a few scalar columns), then
streams it batch by batch: ``to_tensor`` (zero-copy) for the feature vectors,
``gather`` for the scalar columns, the bundled model on both, ``from_tensor``
for the predictions, written to an output Parquet file. It checks every
prediction against eager PyTorch on the same rows and prints a summary.

Part 1 of the roadmap: the native conversion path end to end. The Spark job
(``torchspark.predict`` over ``mapInArrow``) replaces this loop in a later
release.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

import torchspark

__all__ = ["DemoModel", "main", "make_dataset"]

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


def score(input_path: str, output_path: str, model: torch.nn.Module, batch_rows: int) -> dict:
    """Stream ``input_path``, score every batch, write ``output_path``; return stats."""
    import pyarrow.parquet as pq

    source = pq.ParquetFile(input_path)
    rows = 0
    convert_s = 0.0
    compute_s = 0.0
    max_error = 0.0
    writer = None
    try:
        with torch.inference_mode():
            for batch in source.iter_batches(batch_size=batch_rows):
                t0 = time.perf_counter()
                features = torchspark.to_tensor(batch.column("features"))  # zero-copy [N, 64]
                scalars = torchspark.gather(batch, SCALARS)  # one pass -> [N, 4] float32
                t1 = time.perf_counter()
                predictions = model(features, scalars)
                t2 = time.perf_counter()
                out = torchspark.to_batch({"id": batch.column("id"), "prediction": predictions})
                convert_s += (t1 - t0) + (time.perf_counter() - t2)
                compute_s += t2 - t1

                # Independent reference: numpy -> torch, the way a user would write it.
                ref_features = torch.tensor(
                    batch.column("features").values.to_numpy().reshape(batch.num_rows, -1)
                )
                ref_scalars = torch.stack(
                    [torch.tensor(batch.column(c).to_numpy()).float() for c in SCALARS], 1
                )
                expected = model(ref_features, ref_scalars)
                max_error = max(max_error, (expected - predictions).abs().max().item())

                if writer is None:
                    writer = pq.ParquetWriter(output_path, out.schema)
                writer.write_batch(out)
                rows += batch.num_rows
                print(f"\r  scored {rows:,} rows", end="", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()
        print(file=sys.stderr)
    return {"rows": rows, "convert_s": convert_s, "compute_s": compute_s, "max_error": max_error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchspark.demo", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per Arrow batch")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.rows < 0 or args.batch_rows <= 0:
        parser.error("--rows must be >= 0 and --batch-rows > 0")

    workdir = args.workdir or tempfile.mkdtemp(prefix="torchspark-demo-")
    os.makedirs(workdir, exist_ok=True)
    try:
        return _run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: str) -> int:
    input_path = os.path.join(workdir, "input.parquet")
    output_path = os.path.join(workdir, "predictions.parquet")

    print(f"torchspark {torchspark.__version__} demo (torch {torch.__version__})")
    t0 = time.perf_counter()
    make_dataset(input_path, args.rows, args.batch_rows)
    print(f"  generated {args.rows:,} rows -> {input_path} ({time.perf_counter() - t0:.2f} s)")

    t0 = time.perf_counter()
    stats = score(input_path, output_path, bundled_model(), args.batch_rows)
    wall = time.perf_counter() - t0
    rate = stats["rows"] / wall if wall > 0 else float("inf")
    kept = "" if args.workdir else " (a temp dir, removed at exit: pass --workdir to keep it)"
    print(f"  predictions -> {output_path}{kept}")
    print(
        f"rows {stats['rows']:,}  wall {wall:.2f} s (incl. reference check)  "
        f"conversion {stats['convert_s']:.3f} s  model {stats['compute_s']:.3f} s  "
        f"{rate:,.0f} rows/s"
    )
    if stats["max_error"] > 1e-5:
        print(f"FAILED: predictions differ from eager PyTorch by {stats['max_error']:.3g}")
        return 1
    print(f"OK: every prediction matches eager PyTorch (max abs diff {stats['max_error']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
