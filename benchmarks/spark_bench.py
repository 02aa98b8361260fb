"""End-to-end Spark benchmark: torchspark against what a user would otherwise write.

Same data, same model, same Spark session (``local[2]``) for every method;
every method is run ``--repeats`` times, interleaved round by round (A, B, C,
..., then again), after one untimed warm-up run each; the table gives the
median and the minimum wall time of a run (building the DataFrame on the driver
included; its median is the "of which driver s" column), rows/s at the median,
the time relative to the IPC floor and the speedup over ``predict_batch_udf``.

Methods (each reads the same columns, ``id`` plus the model's inputs, and
produces ``id long, prediction float``):

* ``floor``: ``mapInArrow`` returning ``id`` and a constant prediction column.
  The least a ``mapInArrow`` job over these columns costs: Spark's Arrow IPC.
* ``pbu``: ``pyspark.ml.functions.predict_batch_udf`` as its docs say:
  ``make_predict_fn`` loads the model, a tensor column gets
  ``input_tensor_shapes``, a multi-column model gets ``array(*cols)``. As a
  column expression it sends only its inputs to Python (``id`` stays in the
  JVM), which the ``mapIn*`` methods cannot do. Ragged token ids have no
  documented form (a tensor column needs a fixed shape), so the token model
  takes ``(tokens, size(tokens))`` with ``input_tensor_shapes=[None, None]``
  (rows arrive as numpy arrays) and pads each batch to its longest row.
* ``arrow``: hand-written ``mapInArrow``: pyarrow -> numpy -> ``torch.from_numpy``
  -> model, the model loaded once per partition iterator.
* ``pandas``: hand-written ``mapInPandas`` (``np.stack`` of the array column,
  ``DataFrame.to_numpy`` of the scalar columns), model loaded the same way.
* ``keep-map`` and ``keep-udf`` (not in the default list; light and tabular):
  every column of the input kept, as ``withColumn`` does. ``keep-map`` is
  ``torchspark.predict(..., keep=<every column>)``: through ``mapInArrow``
  every kept column crosses to Python and back. ``keep-udf`` is
  ``df.withColumn("prediction", torchspark.torch_udf(...)(inputs))`` on
  ``arrow_udf`` (Spark 4.1+): the kept columns stay in the JVM and only the
  inputs cross (tabular: the 64 columns packed into one ``array`` in the JVM,
  as ``Input(pack=True)`` does).
* ``torchspark-metrics`` and ``torchspark-quiet`` (not in the default list):
  ``torchspark`` with live Prometheus metrics on
  (``spark.torchspark.metrics.enabled=true``: every task writes its executor's
  metrics and sends the driver its figures once a second), and with nothing
  live (``progress=False``, metrics off). Their ratio is what the metrics cost.
* ``torchspark-shared`` (not in the default list): ``torchspark`` with
  ``share="executor"``: the executor's tasks feed one engine process over
  shared memory (its intra-op threads: the cores it may use) instead of an
  engine each (``--torch-threads`` each). Its ratio to ``torchspark`` is
  what ``share="auto"`` on the CPU is decided by (at least 0.95x to share).
* ``torchspark``: ``torchspark.predict(..., keep=["id"])`` on a TorchScript
  file made by ``torchspark.export`` (see ``torchspark_predict``; skipped with
  a note where the API does not exist). ``predict`` itself runs a probe batch
  on the driver and ships the model file; that is inside its timed runs. The
  token model gets ``max_tokens`` (``--max-tokens``, default 64 x 256, the
  baselines' worst-case padded batch) and ``sort_window`` (``--sort-window``).

Workloads (data made once per workload with a fixed seed):

* ``light``: 200k rows x ``array<float>`` of 256, ``Linear(256, 1)`` + sigmoid.
* ``mlp``: the same data, a 256-1024-1024-1 ReLU MLP (compute-bound: ~4 s of
  torch per 200k rows on these 2 cores).
* ``tabular``: 500k rows x 64 scalar ``float`` columns, a 64-32-1 MLP + sigmoid.
* ``tokens``: 20k rows of ``array<int>`` token ids (1..999), lengths
  log-uniform in 8..256 (mean ~72, so a batch's longest row is ~3.5x its mean),
  a small transformer encoder (2 pre-LN layers, d=32, 2 heads, masked mean
  pool, linear head + sigmoid; pad id 0). The baselines cut fixed-size batches
  of ``--token-batch`` rows, each padded to its longest row; torchspark gets a
  token budget instead. 20k rows (not more) because the padded baselines
  score only ~2.5k rows/s here.

Fairness choices:

* The data is written to Parquet, read back, ``repartition(--partitions)``-ed
  (default 4: two tasks per core, equal sizes) and cached (``df.cache();
  df.count()``) before anything is timed, so every run reads the same in-memory
  columns and the timed figure is Spark -> Python -> Spark plus the model, not
  Parquet decoding (which would add the same cost to every method and only
  dilute the ratios).
* Each run ends in ``write.format("noop")``: Spark computes every row of
  ``id, prediction`` and discards it, the same cheap sink for every method.
* ``spark.sql.execution.arrow.maxRecordsPerBatch`` is set explicitly
  (``--max-records-per-batch``, default 10000, Spark's own default). The
  baselines call the model once per Arrow batch (``predict_batch_udf``'s
  ``batch_size`` is the same number), except the token model, whose baselines
  slice each Arrow batch into ``--token-batch`` rows. ``--mrpb-sweep`` also
  times the floor at other values.
* Threads: ``local[2]`` runs two Python workers at once, so each gets
  ``--torch-threads`` (default 1) intra-op threads: ``OMP_NUM_THREADS`` is set
  for every Python worker (``spark.executorEnv`` and the environment the JVM
  inherits, so a worker reused across methods starts each one alike) and the
  baselines also call ``torch.set_num_threads`` when they load the model.
  Python workers are reused (``spark.python.worker.reuse``).
* Models are eager ``nn.Module``s with weights from ``torch.manual_seed``,
  saved as a state dict that the baselines load (``torch.load`` +
  ``load_state_dict``) and exported once for torchspark.
* Before timing, each method's predictions for a handful of ids are compared
  with eager torch in the driver (unpadded rows for the token model); any
  difference above 1e-4 (relative above 1) stops the benchmark.

Run from the repository root: ``python benchmarks/spark_bench.py`` (all
workloads, ~6 min), ``--quick`` (small data, one repeat, ~2.5 min), e.g.
``--workloads light,tabular --methods floor,pbu,arrow``; ``--wait-load 1.0``
waits for a quiet machine first (other builds on a 2-core box distort
everything by 2x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _bench

import torchspark

SEED = 0
DIM = 256  # features per row of the array<float> workloads
TABULAR_COLS = [f"f{i}" for i in range(64)]
VOCAB = 1000
MAX_LEN = 256
METHODS = ["floor", "pbu", "arrow", "pandas", "torchspark", "torchspark-unpacked"]
KEEP_METHODS = ["keep-map", "keep-udf"]  # every column kept; run only when asked for
# Live metrics and progress, run only when asked for: torchspark-metrics with
# spark.torchspark.metrics.enabled=true (and the progress line, the default),
# torchspark-quiet with neither; torchspark itself has the progress line only.
LIVE_METHODS = ["torchspark-metrics", "torchspark-quiet", "torchspark-shared"]
OUT_SCHEMA = "id long, prediction float"


# --------------------------------------------------------------------------- models


class Light(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(DIM, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tabular(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(len(TABULAR_COLS), 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class Block(nn.Module):
    """Pre-LN transformer encoder layer; ``keep`` [B, 1, 1, L] masks pad keys."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(self.ln1(x)).unflatten(-1, (3, self.heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return x + self.ff(self.ln2(x))


class TokenEncoder(nn.Module):
    """Right-padded token ids [B, L] (pad id 0) -> a score per row.

    The output of a row does not depend on how far it was padded: pad keys are
    masked out of attention and out of the mean pool.
    """

    def __init__(self, d: int = 32, heads: int = 2, layers: int = 2, ff: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d, padding_idx=0)
        self.pos = nn.Embedding(MAX_LEN, d)
        self.blocks = nn.ModuleList([Block(d, heads, ff) for _ in range(layers)])
        self.head = nn.Linear(d, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        keep = tokens != 0
        positions = torch.cumsum(torch.ones_like(tokens), 1) - 1  # traces with any L
        x = self.embed(tokens) + self.pos(positions)
        mask = keep[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        m = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.sigmoid(self.head(pooled))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "light": Light,
    "mlp": MLP,
    "tabular": Tabular,
    "tokens": TokenEncoder,
}


# ------------------------------------------------------------------------ workloads


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "dense" (one array<float> column), "columns" (scalars), "tokens" (ragged)
    rows: int
    quick_rows: int

    @property
    def cols(self) -> list[str]:
        return {"dense": ["features"], "columns": TABULAR_COLS, "tokens": ["tokens"]}[self.kind]


WORKLOADS = {
    w.name: w
    for w in (
        Workload("light", "dense", 200_000, 20_000),
        Workload("mlp", "dense", 200_000, 20_000),
        Workload("tabular", "columns", 500_000, 20_000),
        Workload("tokens", "tokens", 20_000, 2_000),
    )
}


def make_table(kind: str, rows: int) -> pa.Table:
    """The workload's data: ``id`` (0..rows-1) and its input columns, seed ``SEED``."""
    rng = np.random.default_rng(SEED)
    ids = pa.array(np.arange(rows, dtype=np.int64))
    if kind == "dense":
        values = rng.standard_normal(rows * DIM, dtype=np.float32)
        offsets = np.arange(0, (rows + 1) * DIM, DIM, dtype=np.int32)
        col = pa.ListArray.from_arrays(
            pa.array(offsets),
            pa.array(values),
            type=pa.list_(pa.field("element", pa.float32(), nullable=False)),
        )
        return pa.table({"id": ids, "features": col})
    if kind == "columns":
        data = rng.standard_normal((len(TABULAR_COLS), rows), dtype=np.float32)
        return pa.table({"id": ids, **{c: data[i] for i, c in enumerate(TABULAR_COLS)}})
    lengths = np.exp(rng.uniform(np.log(8), np.log(MAX_LEN + 1), rows)).astype(np.int32)
    lengths = np.clip(lengths, 8, MAX_LEN)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(1, VOCAB, int(offsets[-1]), dtype=np.int32)
    col = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.array(values),
        type=pa.list_(pa.field("element", pa.int32(), nullable=False)),
    )
    return pa.table({"id": ids, "tokens": col})


def reference_inputs(table: pa.Table, kind: str, ids: list[int]) -> list[torch.Tensor]:
    """One unpadded input row per id (a [1, ...] tensor), for eager torch."""
    if kind == "columns":
        return [
            torch.tensor([[table.column(c)[i].as_py() for c in TABULAR_COLS]], dtype=torch.float32)
            for i in ids
        ]
    col = table.column("features" if kind == "dense" else "tokens")
    dtype = torch.float32 if kind == "dense" else torch.int64
    return [torch.tensor([col[i].as_py()], dtype=dtype) for i in ids]


# ------------------------------------------------- what runs in the Python workers

# Everything below up to the drivers is pickled (cloudpickle, by value, since it
# lives in __main__) into Spark's Python workers. ``cfg`` is a small dict:
# kind, cols, model, state (path of the state dict), threads, token_batch.


def load_model(cfg: dict) -> nn.Module:
    # Arrow buffers are read-only; the models never write to their inputs.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(cfg["threads"])
    model = MODELS[cfg["model"]]()
    model.load_state_dict(torch.load(cfg["state"], weights_only=True))
    return model.eval()


def pad_chunks(offsets: np.ndarray, values: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """Fixed-size batches of ``rows`` ragged rows, each right-padded (0) to its longest row."""
    lengths = np.diff(offsets)
    for start in range(0, len(lengths), rows):
        stop = min(start + rows, len(lengths))
        lens = lengths[start:stop]
        out = np.zeros((stop - start, int(lens.max())), dtype=np.int64)
        out[np.arange(out.shape[1]) < lens[:, None]] = values[offsets[start] : offsets[stop]]
        yield out


def arrow_inputs(batch: pa.RecordBatch, cfg: dict) -> Iterator[torch.Tensor]:
    kind, cols = cfg["kind"], cfg["cols"]
    if kind == "dense":
        col = batch.column(cols[0])
        yield torch.from_numpy(col.flatten().to_numpy().reshape(len(col), -1))
    elif kind == "columns":
        yield torch.from_numpy(np.column_stack([batch.column(c).to_numpy() for c in cols]))
    else:
        col = batch.column(cols[0])
        offsets = col.offsets.to_numpy()
        values = col.flatten().to_numpy()
        for chunk in pad_chunks(offsets - offsets[0], values, cfg["token_batch"]):
            yield torch.from_numpy(chunk)


def pandas_inputs(pdf: pd.DataFrame, cfg: dict) -> Iterator[torch.Tensor]:
    kind, cols = cfg["kind"], cfg["cols"]
    if kind == "dense":
        yield torch.from_numpy(np.stack(pdf[cols[0]].to_numpy()).astype(np.float32, copy=False))
    elif kind == "columns":
        yield torch.from_numpy(pdf[cols].to_numpy(dtype=np.float32))
    else:
        rows = pdf[cols[0]].to_numpy()
        step = cfg["token_batch"]
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            out = np.zeros((len(chunk), max(len(r) for r in chunk)), dtype=np.int64)
            for i, r in enumerate(chunk):
                out[i, : len(r)] = r
            yield torch.from_numpy(out)


def predict_all(model: nn.Module, inputs: Iterator[torch.Tensor]) -> np.ndarray:
    preds = [model(x).reshape(-1) for x in inputs]
    return (preds[0] if len(preds) == 1 else torch.cat(preds)).numpy()


def floor_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        constant = pa.array(np.zeros(batch.num_rows, dtype=np.float32))
        yield pa.RecordBatch.from_arrays([batch.column("id"), constant], ["id", "prediction"])


def make_arrow_fn(cfg: dict) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = load_model(cfg)
        with torch.inference_mode():
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                pred = pa.array(predict_all(model, arrow_inputs(batch, cfg)))
                yield pa.RecordBatch.from_arrays([batch.column("id"), pred], ["id", "prediction"])

    return fn


def make_pandas_fn(cfg: dict) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def fn(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = load_model(cfg)
        with torch.inference_mode():
            for pdf in frames:
                if len(pdf) == 0:
                    continue
                pred = predict_all(model, pandas_inputs(pdf, cfg))
                yield pd.DataFrame({"id": pdf["id"].to_numpy(), "prediction": pred})

    return fn


def make_predict_fn_factory(cfg: dict) -> Callable[[], Callable[..., np.ndarray]]:
    def make_predict_fn() -> Callable[..., np.ndarray]:
        model = load_model(cfg)
        if cfg["kind"] != "tokens":

            def predict(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).reshape(-1).numpy()

            return predict

        def predict_tokens(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            out = np.zeros((len(tokens), int(lengths.max())), dtype=np.int64)
            for i, r in enumerate(tokens):
                out[i, : len(r)] = r
            with torch.inference_mode():
                return model(torch.from_numpy(out)).reshape(-1).numpy()

        return predict_tokens

    return make_predict_fn


# ---------------------------------------------------------------------- the methods


def torchspark_predict(
    df,
    wl: Workload,
    model_path: str,
    args: argparse.Namespace,
    pack: bool = True,
    progress: bool = True,
    share: str = "task",
):
    """The torchspark call, in one place. Scalar columns use the opt-in packed
    encoding (``Input(pack=True)``: one JVM-built array column crosses to
    Python) unless ``pack`` is false (the ``torchspark-unpacked`` method);
    ``progress=False``: no progress line (``torchspark-quiet``); ``share``:
    where the engine runs (``"executor"``: ``torchspark-shared``)."""
    extra: dict = {"share": share} if progress else {"progress": False, "share": share}
    if wl.kind == "dense":
        inputs: object = wl.cols[0]
    elif wl.kind == "columns":
        inputs = [torchspark.Input(wl.cols, pack=pack)]
    else:
        inputs = [torchspark.Input(wl.cols[0], kind="pad")]
        extra["max_tokens"] = args.max_tokens
        extra["sort_window"] = args.sort_window
    out = torchspark.predict(
        df,
        model_path,
        inputs=inputs,
        output="prediction",
        keep=["id"],
        batch_size=args.batch_size,
        **extra,
    )
    return out.select("id", "prediction")


def keep_everything(df, wl: Workload, model_path: str, args: argparse.Namespace, via: str):
    """Every column of ``df`` kept and a ``prediction`` column added, through
    ``mapInArrow`` (``via="map"``) or an ``arrow_udf`` column (``via="udf"``)."""
    from pyspark.sql import functions as F

    packed = wl.kind == "columns"
    if via == "map":
        inputs = [torchspark.Input(wl.cols, pack=True)] if packed else wl.cols[0]
        return torchspark.predict(
            df, model_path, inputs=inputs, keep=df.columns, batch_size=args.batch_size
        )
    score = torchspark.torch_udf(model_path, return_type="float", batch_size=args.batch_size)
    column = F.array(*[F.col(c).cast("float") for c in wl.cols]) if packed else F.col(wl.cols[0])
    return df.withColumn("prediction", score(column))


def build_methods(df, wl: Workload, cfg: dict, ts_path: str, args: argparse.Namespace) -> dict:
    """name -> a function returning the DataFrame ``id, prediction`` of that method."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    def pbu():
        # A new UDF per run, as a new job would make: its model cache key is fresh.
        if wl.kind == "tokens":
            udf = predict_batch_udf(
                make_predict_fn_factory(cfg),
                return_type=FloatType(),
                batch_size=args.token_batch,
                input_tensor_shapes=[None, None],
            )
            col = udf(F.col("tokens"), F.size("tokens"))
        elif wl.kind == "columns":
            udf = predict_batch_udf(
                make_predict_fn_factory(cfg),
                return_type=FloatType(),
                batch_size=args.batch_size,
                input_tensor_shapes=[[len(wl.cols)]],
            )
            col = udf(F.array(*wl.cols))
        else:
            udf = predict_batch_udf(
                make_predict_fn_factory(cfg),
                return_type=FloatType(),
                batch_size=args.batch_size,
                input_tensor_shapes=[[DIM]],
            )
            col = udf(F.col(wl.cols[0]))
        return df.select("id", col.alias("prediction"))

    all_methods = {
        "floor": lambda: df.mapInArrow(floor_fn, OUT_SCHEMA),
        "pbu": pbu,
        "arrow": lambda: df.mapInArrow(make_arrow_fn(cfg), OUT_SCHEMA),
        "pandas": lambda: df.mapInPandas(make_pandas_fn(cfg), OUT_SCHEMA),
        "torchspark": lambda: torchspark_predict(df, wl, ts_path, args),
        "torchspark-unpacked": lambda: torchspark_predict(df, wl, ts_path, args, pack=False),
        "torchspark-metrics": lambda: with_metrics(
            df, lambda: torchspark_predict(df, wl, ts_path, args)
        ),
        "torchspark-quiet": lambda: torchspark_predict(df, wl, ts_path, args, progress=False),
        "torchspark-shared": lambda: torchspark_predict(df, wl, ts_path, args, share="executor"),
        "keep-map": lambda: keep_everything(df, wl, ts_path, args, "map"),
        "keep-udf": lambda: keep_everything(df, wl, ts_path, args, "udf"),
    }
    # Packing only changes how scalar columns cross: the unpacked row is for them.
    methods = [m for m in args.methods if m != "torchspark-unpacked" or wl.kind == "columns"]
    methods = [m for m in methods if m not in KEEP_METHODS or wl.kind != "tokens"]
    return {m: all_methods[m] for m in methods}


def with_metrics(df, make: Callable):
    """``make()`` with live Prometheus metrics on: the DataFrame it returns
    keeps them (its function took the conf when it was made)."""
    conf = df.sparkSession.conf
    conf.set("spark.torchspark.metrics.enabled", "true")
    try:
        return make()
    finally:
        conf.unset("spark.torchspark.metrics.enabled")


def sink(out) -> None:
    out.write.format("noop").mode("overwrite").save()


# ----------------------------------------------------------------------- the driver


def check(name: str, out, ids: list[int], expected: dict[int, float]) -> float:
    """Compares ``out``'s predictions for ``ids`` with eager torch; returns the max error."""
    from pyspark.sql import functions as F

    rows = out.filter(F.col("id").isin(ids)).select("id", "prediction").collect()
    got = {}
    for r in rows:
        p = r["prediction"]
        got[r["id"]] = float(p[0] if isinstance(p, (list, tuple)) else p)
    if sorted(got) != sorted(ids):
        raise SystemExit(f"{name}: predictions for ids {sorted(got)}, expected ids {sorted(ids)}")
    worst = 0.0
    for i in ids:
        err = abs(got[i] - expected[i])
        if err > 1e-4 * max(1.0, abs(expected[i])):
            raise SystemExit(
                f"{name}: id {i} predicted {got[i]!r}, eager torch gives {expected[i]!r}"
            )
        worst = max(worst, err)
    return worst


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}"


def report(
    wl: Workload,
    rows: int,
    cases: list[_bench.Case],
    sweep: list[_bench.Case],
    build: dict[str, list[float]],
) -> None:
    by = {c.name: c for c in cases}
    floor, pbu = by.get("floor"), by.get("pbu")
    table_rows = []
    for c in cases + sweep:
        table_rows.append(
            [
                c.name,
                fmt_s(c.median),
                fmt_s(c.min),
                fmt_s(statistics.median(build[c.name])) if c.name in build else "-",
                f"{rows / c.median:,.0f}",
                _bench.ratio(c.median / floor.median) if floor else "-",
                _bench.ratio(pbu.median / c.median) if pbu and c.name in build else "-",
            ]
        )
    print(
        _bench.table(
            [
                "method",
                "median s",
                "min s",
                "of which driver s",
                "rows/s",
                "time / floor",
                "speedup vs pbu",
            ],
            table_rows,
        )
    )
    keep_map, keep_udf = by.get("keep-map"), by.get("keep-udf")
    if keep_map and keep_udf:
        print(
            f"\nkeeping every column: keep-udf (arrow_udf) {keep_udf.median:.3f} s, keep-map "
            f"(mapInArrow) {keep_map.median:.3f} s: arrow_udf takes "
            f"{keep_udf.median / keep_map.median:.2f}x the time of mapInArrow"
        )
    ts = by.get("torchspark")
    metrics, quiet = by.get("torchspark-metrics"), by.get("torchspark-quiet")
    if metrics and (quiet or ts):
        off = quiet or ts
        r = metrics.median / off.median
        print(
            f"\nlive metrics: torchspark-metrics {metrics.median:.3f} s, {off.name} "
            f"{off.median:.3f} s: {r:.3f}x the time with metrics on (target <= 1.02: "
            f"{'met' if r <= 1.02 else 'NOT met'})"
            + (
                f"; progress line only (torchspark) {ts.median / quiet.median:.3f}x"
                if ts and quiet
                else ""
            )
        )
    if ts is None:
        return
    baselines = [c for c in cases if c.name in ("pbu", "arrow", "pandas")]
    verdicts = []
    if wl.name in ("light", "tabular"):
        if floor:
            r = ts.median / floor.median
            verdicts.append(
                f"vs floor {r:.3f}x (target <= 1.10: {'met' if r <= 1.10 else 'NOT met'})"
            )
        if pbu:
            need = 1.3 if wl.name == "light" else 1.5
            r = pbu.median / ts.median
            verdicts.append(
                f"vs pbu {r:.2f}x (target >= {need}: {'met' if r >= need else 'NOT met'})"
            )
    elif baselines:
        best = min(baselines, key=lambda c: c.median)
        r = best.median / ts.median
        target = "matches" if wl.name == "mlp" else "beats"
        met = r >= 1.0 if wl.name == "mlp" else r > 1.0
        verdicts.append(
            f"vs best baseline ({best.name}) {r:.3f}x in rows/s (target: {target} it: "
            f"{'met' if met else 'NOT met'})"
        )
    if verdicts:
        print("\ntorchspark: " + "; ".join(verdicts))


def parse_rows(spec: str | None) -> dict[str, int]:
    if not spec:
        return {}
    if "=" not in spec:
        return dict.fromkeys(WORKLOADS, int(spec))
    out = {}
    for part in spec.split(","):
        name, n = part.split("=")
        if name not in WORKLOADS:
            raise SystemExit(f"--rows: unknown workload {name!r}")
        out[name] = int(n)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of %(default)s")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of %(default)s")
    p.add_argument("--rows", help="rows for every workload (N) or per workload (light=N,mlp=M)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (3; quick 1)")
    p.add_argument("--quick", action="store_true", help="small data, one repeat (minutes)")
    p.add_argument(
        "--mrpb-sweep",
        default="",
        help="also time the floor at these maxRecordsPerBatch values, e.g. 2000,5000,20000",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="model batch rows (default: the Arrow batch)"
    )
    p.add_argument("--token-batch", type=int, default=64, help="rows per padded token batch")
    p.add_argument(
        "--max-tokens", type=int, default=64 * MAX_LEN, help="torchspark token budget per batch"
    )
    p.add_argument(
        "--sort-window", type=int, default=4096, help="torchspark length-sorting window (tokens)"
    )
    _bench.spark_run_arguments(p)
    args = p.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.methods = [m for m in args.methods.split(",") if m]
    for w in args.workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: unknown {w!r}; expected some of {list(WORKLOADS)}")
    for m in args.methods:
        known = METHODS + KEEP_METHODS + LIVE_METHODS
        if m not in known:
            raise SystemExit(f"--methods: unknown {m!r}; expected some of {known}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    args.rounds = args.repeats  # for _bench.header
    args.batch_size = args.batch_size or args.mrpb
    args.sweep = [int(v) for v in args.mrpb_sweep.split(",") if v]
    args.row_counts = parse_rows(args.rows)
    if any(m in args.methods for m in ["torchspark-unpacked", *KEEP_METHODS, *LIVE_METHODS]) and (
        "torchspark" not in args.methods
    ):
        args.methods.append("torchspark")  # the export below is keyed on it
    if "torchspark" in args.methods and not hasattr(torchspark, "predict"):
        print("note: torchspark.predict does not exist in this build; skipping method torchspark\n")
        args.methods.remove("torchspark")
    return args


def start_spark(
    args: argparse.Namespace, name: str = "spark_bench", config: dict[str, str] | None = None
):
    """The benchmarks' ``local[2]`` SparkSession (``name`` in its app name):
    ``args.threads`` torch/OpenMP threads per Python worker, Arrow batches of
    ``args.mrpb`` rows, ``args.partitions`` shuffle partitions, workers reused,
    no UI or AQE; ``config`` adds or overrides settings."""
    # Every Python worker the JVM starts inherits these (set before the JVM exists).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TORCHSPARK_LOG_LEVEL", "WARNING")  # no per-task log lines
    from pyspark.sql import SparkSession

    settings = {
        "spark.driver.memory": args.driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.mrpb),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(args.partitions),
        "spark.sql.adaptive.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.OMP_NUM_THREADS": str(args.threads),
        "spark.executorEnv.MKL_NUM_THREADS": str(args.threads),
        **(config or {}),
    }
    builder = SparkSession.builder.master("local[2]").appName(f"torchspark {name}")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def cached_frame(spark, table: pa.Table, path: str, args: argparse.Namespace):
    """``table`` written to Parquet at ``path``, read back, ``repartition``-ed
    to ``args.partitions`` and cached (counted, so the cache is filled)."""
    pq.write_table(table, path)
    df = spark.read.parquet(path).repartition(args.partitions).cache()
    assert df.count() == table.num_rows
    return df


def saved_model(name: str, workdir: str) -> tuple[nn.Module, str]:
    """The workload's model (seeded weights, eval mode) and the file of its
    state dict, which the baselines load."""
    torch.manual_seed(SEED)
    model = MODELS[name]().eval()
    state = os.path.join(workdir, f"{name}_state.pt")
    torch.save(model.state_dict(), state)
    return model, state


def run_workload(spark, wl: Workload, workdir: str, args: argparse.Namespace, data: dict) -> None:
    rows = args.row_counts.get(wl.name, wl.quick_rows if args.quick else wl.rows)
    key = (wl.kind, rows)
    t0 = time.perf_counter()
    if data.get("key") != key:
        if data.get("df") is not None:
            data["df"].unpersist(blocking=True)
        table = make_table(wl.kind, rows)
        df = cached_frame(spark, table, os.path.join(workdir, f"{wl.kind}_{rows}.parquet"), args)
        data.update(key=key, df=df, table=table)
    df, table = data["df"].select("id", *wl.cols), data["table"]
    prep_s = time.perf_counter() - t0

    # The model: seeded init, a state dict for the baselines, an export for torchspark.
    model, state = saved_model(wl.name, workdir)
    ts_path = os.path.join(workdir, f"{wl.name}.pt")
    if "torchspark" in args.methods:
        example = (
            torch.randint(1, VOCAB, (4, 16))
            if wl.kind == "tokens"
            else torch.randn(4, len(wl.cols) if wl.kind == "columns" else DIM)
        )
        torchspark.export(model, (example,), ts_path, format="torchscript")
    cfg = {
        "kind": wl.kind,
        "cols": wl.cols,
        "model": wl.name,
        "state": state,
        "threads": args.threads,
        "token_batch": args.token_batch,
    }
    methods = build_methods(df, wl, cfg, ts_path, args)

    print(f"## {wl.name}: {rows:,} rows, {wl.kind} input {', '.join(wl.cols[:3])}", end="")
    print(f"{' ...' if len(wl.cols) > 3 else ''} (data ready in {prep_s:.1f} s)")
    if wl.kind == "tokens":
        lengths = np.diff(table.column("tokens").chunk(0).offsets.to_numpy())
        print(
            f"token lengths: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
            f"max {lengths.max()}; baselines: {args.token_batch}-row batches padded to "
            f"their longest row; torchspark: max_tokens {args.max_tokens}, "
            f"sort_window {args.sort_window}"
        )

    # Correctness, once per method, against eager torch on unpadded rows.
    rng = np.random.default_rng(SEED + 1)
    ids = sorted({0, rows - 1, *rng.choice(rows, 6, replace=False).tolist()})
    with torch.inference_mode():
        expected = {
            i: float(model(x).reshape(-1)[0])
            for i, x in zip(ids, reference_inputs(table, wl.kind, ids), strict=True)
        }
    errors = []
    for name, make in methods.items():
        if name != "floor":
            errors.append(f"{name} {check(name, make(), ids, expected):.1e}")
    if errors:
        print(f"correct on ids {ids} (max abs error vs eager torch: {', '.join(errors)})")

    # Building the DataFrame is part of each run (torchspark.predict runs a probe
    # batch on the driver there); its median is the table's "of which driver s".
    build: dict[str, list[float]] = {name: [] for name in methods}

    def timed(name: str, make: Callable) -> Callable[[], None]:
        def fn() -> None:
            t = time.perf_counter()
            out = make()
            build[name].append(time.perf_counter() - t)
            sink(out)

        return fn

    cases = [_bench.Case(name, timed(name, make)) for name, make in methods.items()]
    sweep = []
    for v in args.sweep:

        def floor_at(v: int = v) -> None:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(v))
            try:
                sink(df.mapInArrow(floor_fn, OUT_SCHEMA))
            finally:
                spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.mrpb))

        sweep.append(_bench.Case(f"floor @ mrpb {v}", floor_at))
    everything = cases + sweep
    for case in everything:  # warm-up: workers start, import torch, load the model
        case.fn()
    for _ in range(args.repeats):
        for case in everything:
            t = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - t)
    print()
    report(wl, rows, cases, sweep, build)
    print()


def wait_for_load(limit: float) -> None:
    deadline = time.monotonic() + 900
    while limit > 0 and os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(10)


def main() -> None:
    args = parse_args()
    wait_for_load(args.wait_load)
    _bench.header("spark_bench: end-to-end Spark inference, local[2]", args)
    spark = start_spark(args)
    print(
        f"spark {spark.version} local[2] | maxRecordsPerBatch {args.mrpb} | "
        f"model batch {args.batch_size} rows | partitions {args.partitions} (cached) | "
        f"torch threads per Python worker {args.threads} | repeats {args.repeats} "
        "(+1 warm-up) | times: wall s per run, median and min\n"
    )
    data: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="spark_bench_") as workdir:
            for name in args.workloads:
                run_workload(spark, WORKLOADS[name], workdir, args, data)
    finally:
        spark.stop()
    _bench.footer()


if __name__ == "__main__":
    main()
