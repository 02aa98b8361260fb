"""End-to-end text-embedding benchmark: torchspark's text input against what users write.

Workload: ``--rows`` (default 20,000) generated sentences of 3-250 words with
lognormal lengths (``torchspark.demo.text.make_sentences``: median 16 words, a
long tail), in one Parquet file; a WordPiece tokenizer trained here
(``tokenizers``, BERT-style, ~8k tokens, truncation at 256 tokens); a
MiniLM-sized BERT encoder (6 layers, hidden 384, 12 heads, intermediate 1536,
random weights from ``transformers``) returning mask-weighted mean-pooled
embeddings ``[N, 384]``. ``--small``: the demo's small encoder (2 layers,
hidden 128), 2,000 rows, one repeat: a smoke run, not a measurement.

Methods (each produces ``id long, embedding array<float>`` for every row):

* ``ts``: ``torchspark.predict`` with ``Input("text", kind="text",
  tokenizer=...)`` on a TorchScript export: the engine tokenizes, sorts by
  token length and picks the token budget itself (no ``max_tokens``).
* ``ts-2048``: the same with ``max_tokens=2048``.
* ``pbu``: ``predict_batch_udf`` with the tokenizer called in the predict
  function, ``--batch`` rows per call, each padded to its longest row
  (``torchspark.demo.text.predict_fn_factory``).
* ``pbu-sorted``: the same after ``df.sortWithinPartitions(length("text"))``,
  the line a savvy user adds so that neighbouring rows have similar lengths.
* ``pandas``: ``mapInPandas`` with the tokenizer and the model loaded once per
  Python worker, ``--batch`` rows per call padded to their longest.
* ``daft``: Daft reading the same Parquet file, a ``@daft.cls`` UDF that loads
  the tokenizer and the model once per instance (``max_concurrency=2``,
  ``use_process=True``, one torch thread each), ``--batch`` rows per call.
  Daft starts its UDF processes (and loads the model) in every run. Install:
  ``pip install --no-deps daft`` into ``.venv`` (daft 0.7.26 pins
  ``pyarrow<26`` and ``tqdm<4.68``, and a plain install would downgrade the
  pyarrow 26 torchspark is tested with; this script ran with both newer ones).
* ``eager``: outside Spark, in this process: the tokenizer over all rows, rows
  sorted by token length, batches cut by ``--eager-tokens`` padded tokens,
  torch on both cores (``--eager-threads``): the compute bound.

Fairness and checks:

* The Spark methods share one session (``local[2]``, one torch thread per
  Python worker: ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)`` in the
  baselines' loaders; torchspark sets it from ``spark.task.cpus``), read the
  same DataFrame (the Parquet file ``repartition``-ed to ``--partitions`` and
  cached) and end in ``write.format("noop")``. The baselines run the eager
  ``transformers`` module (state dict loaded), torchspark its TorchScript trace.
* Before anything is timed, every method runs once over all rows and each
  embedding is compared with the reference: the same tokenizer and module,
  eager, rows grouped by token length so no batch holds padding
  (``torchspark.demo.text.reference_embeddings``); any |difference| above 1e-4
  stops that method. That run is also its warm-up.
* Timed runs are interleaved (``ts``, ``ts-2048``, ``pbu``, ..., then again)
  ``--repeats`` times; the table gives the median and the minimum and rows/s at
  the median, and how many times faster each torchspark method is.
* A method that fails (torchspark without its text input kind, Daft missing)
  is reported with its error; the others still run; the exit status is 1.

Run from the repository root: ``python benchmarks/text_bench.py`` (all methods,
20k rows: tens of minutes on 2 cores; ``--wait-load 1.0`` waits for a quiet
machine first), ``--small`` for a smoke run, ``--methods pbu,eager`` to choose.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _bench
import spark_bench

import torchspark
from torchspark.demo import text as T

METHODS = ["ts", "ts-2048", "pbu", "pbu-sorted", "pandas", "daft", "eager"]
TS_METHODS = {"ts": None, "ts-2048": 2048}  # name -> max_tokens
OUT_SCHEMA = "id long, embedding array<float>"


# ------------------------------------------------------------------ the baselines


def _worker_cache() -> dict:
    """A dict that lives as long as the Python worker process. Functions of
    this script are pickled by value, so a global here would be a fresh copy
    in every task; a module in ``sys.modules`` is not."""
    module = sys.modules.get("_text_bench_worker")
    if module is None:
        module = types.ModuleType("_text_bench_worker")
        module.cache = {}
        sys.modules["_text_bench_worker"] = module
    return module.cache


def make_pandas_fn(cfg: dict) -> Callable:
    """``mapInPandas``: the tokenizer and model loaded once per Python worker,
    ``cfg["batch"]`` rows per model call, each batch padded to its longest."""

    def fn(batches):
        import pandas as pd

        cache = _worker_cache()
        key = (cfg["tokenizer"], cfg["state"])
        if key not in cache:
            torch.set_num_threads(cfg["threads"])
            cache[key] = (
                T.load_tokenizer(cfg["tokenizer"], pad=True),
                T.load_encoder(cfg["state"], cfg["size"], cfg["vocab"]),
            )
        tokenizer, model = cache[key]
        for pdf in batches:
            texts = pdf["text"].tolist()
            parts = []
            with torch.inference_mode():
                for i in range(0, len(texts), cfg["batch"]):
                    parts.append(model(*T.encode(tokenizer, texts[i : i + cfg["batch"]])).numpy())
            emb = np.concatenate(parts) if parts else np.zeros((0, cfg["hidden"]), np.float32)
            yield pd.DataFrame({"id": pdf["id"].to_numpy(), "embedding": list(emb)})

    return fn


def make_daft_embedder(cfg: dict):
    """A ``@daft.cls`` UDF instance: the tokenizer and model loaded in
    ``__init__`` (once per instance), ``cfg["batch"]`` rows per call."""
    import daft
    from daft import DataType

    @daft.cls(max_concurrency=2, use_process=True)
    class Embedder:
        def __init__(self) -> None:
            torch.set_num_threads(cfg["threads"])
            self.tokenizer = T.load_tokenizer(cfg["tokenizer"], pad=True)
            self.model = T.load_encoder(cfg["state"], cfg["size"], cfg["vocab"])

        @daft.method.batch(return_dtype=DataType.list(DataType.float32()), batch_size=cfg["batch"])
        def __call__(self, text):
            with torch.inference_mode():
                emb = self.model(*T.encode(self.tokenizer, text.to_pylist())).numpy()
            values = pa.array(emb.reshape(-1))
            offsets = pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32))
            return pa.ListArray.from_arrays(offsets, values)

    return Embedder()


def eager_embed(texts: list[str], cfg: dict, model: torch.nn.Module) -> np.ndarray:
    """The compute bound: tokenize everything, sort rows by token length, cut
    batches of at most ``cfg["eager_tokens"]`` padded tokens, run, un-sort."""
    tokenizer = T.load_tokenizer(cfg["tokenizer"])
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), cfg["hidden"]), dtype=np.float32)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            end = start + 1  # ascending lengths: the last row is a batch's longest
            while (
                end < len(order) and (end - start + 1) * lengths[order[end]] <= cfg["eager_tokens"]
            ):
                end += 1
            rows = order[start:end]
            width = int(lengths[rows[-1]])
            ids = np.zeros((len(rows), width), dtype=np.int64)
            types_ = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for j, i in enumerate(rows):
                n = lengths[i]
                ids[j, :n] = encodings[i].ids
                types_[j, :n] = encodings[i].type_ids
                mask[j, :n] = 1
            out[rows] = model(
                torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types_)
            ).numpy()
            start = end
    return out


# ---------------------------------------------------------------------- the driver


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=None, help="sentences (20,000; --small 2,000)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (3; small 1)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of %(default)s")
    p.add_argument("--small", action="store_true", help="tiny model, 2,000 rows: a smoke run")
    p.add_argument("--batch", type=int, default=64, help="baselines' rows per model call")
    p.add_argument("--eager-tokens", type=int, default=2048, help="eager: padded tokens per batch")
    p.add_argument(
        "--eager-threads",
        type=int,
        default=2,
        help="eager: torch threads (default 2, both cores; under load 2 threads ran many "
        "times slower than 1 here: torchspark.demo.text.torch_threads)",
    )
    _bench.spark_run_arguments(p)
    args = p.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; expected some of {METHODS}")
    args.rows = args.rows if args.rows is not None else (2_000 if args.small else 20_000)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.small else 3)
    if args.rows < 1 or args.repeats < 1:
        raise SystemExit("--rows and --repeats must be >= 1")
    args.size = "small" if args.small else "minilm"
    args.quick, args.rounds = args.small, args.repeats  # for _bench.header
    return args


def read_embeddings(path: str, rows: int) -> np.ndarray:
    """``id, embedding`` Parquet (or a table) -> ``[rows, hidden]`` in id order."""
    import pyarrow.compute as pc

    table = (pq.read_table(path) if isinstance(path, str) else path).sort_by("id")
    ids = table.column("id").to_numpy()
    if len(ids) != rows or not np.array_equal(ids, np.arange(rows)):
        raise ValueError(f"expected ids 0..{rows - 1}, got {len(ids)} rows")
    return pc.list_flatten(table.column("embedding")).to_numpy().reshape(rows, -1)


def main() -> int:
    args = parse_args()
    spark_bench.wait_for_load(args.wait_load)
    _bench.header("text_bench: text embeddings end to end, local[2]", args)
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="text_bench_") as workdir:
        # The data, the tokenizer, the model, the reference.
        t0 = time.perf_counter()
        sentences = T.make_sentences(args.rows)
        path = os.path.join(workdir, "text.parquet")
        T.write_sentences(path, sentences)
        tokenizer_path = T.train_tokenizer(
            T.make_sentences(20_000, seed=1000), os.path.join(workdir, "tokenizer.json")
        )
        vocab = T.load_tokenizer(tokenizer_path).get_vocab_size()
        model = T.build_encoder(args.size, vocab)
        state = os.path.join(workdir, "encoder.state.pt")
        torch.save(model.state_dict(), state)
        model_path = os.path.join(workdir, "encoder.pt")
        export_diff = None
        if any(m in TS_METHODS for m in args.methods):
            with T.torch_threads(1):  # see torch_threads: 2 threads crawl under load here
                T.export_encoder(model, model_path)
                export_diff = T.check_export(model, model_path)
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected, tokens = T.reference_embeddings(sentences, tokenizer_path, model)
        reference_s = time.perf_counter() - t0
        shape = T.ENCODERS[args.size]
        print(
            f"## {args.rows:,} sentences, encoder {args.size} ({shape.layers} layers, hidden "
            f"{shape.hidden}), tokenizer {vocab:,} tokens, max_len {T.MAX_LEN} "
            f"(data, tokenizer, model and export ready in {prep_s:.1f} s; reference in "
            f"{reference_s:.1f} s)"
        )
        print(
            f"tokens per row: median {np.median(tokens):.0f}, mean {tokens.mean():.1f}, "
            f"p99 {np.percentile(tokens, 99):.0f}, max {tokens.max()} "
            f"({int((tokens >= T.MAX_LEN).sum())} truncated); padding in {args.batch}-row "
            f"batches: {T.padding_share(tokens, args.batch):.0%} in file order, "
            f"{T.padding_share(np.sort(tokens), args.batch):.0%} sorted by length"
        )
        if export_diff is not None:
            print(
                f"export: TorchScript trace checked against eager at lengths 1-{T.MAX_LEN}, "
                f"max |diff| {export_diff:.1e}"
            )

        cfg = {
            "tokenizer": tokenizer_path,
            "state": state,
            "size": args.size,
            "vocab": vocab,
            "hidden": shape.hidden,
            "threads": args.threads,
            "batch": args.batch,
            "eager_tokens": args.eager_tokens,
        }
        spark = spark_bench.start_spark(args)
        try:
            cases, errors = run_methods(spark, args, cfg, path, model_path, expected, model)
        finally:
            spark.stop()
        failed.update(errors)
    print()
    report(args, cases, failed)
    _bench.footer()
    return 1 if failed else 0


def run_methods(spark, args, cfg, path, model_path, expected, model):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    df = spark.read.parquet(path).repartition(args.partitions).cache()
    assert df.count() == args.rows
    rows = args.rows

    def ts(max_tokens: int | None):
        def make():
            text = torchspark.Input(
                "text", kind="text", tokenizer=cfg["tokenizer"], max_len=T.MAX_LEN
            )
            extra = {} if max_tokens is None else {"max_tokens": max_tokens}
            return torchspark.predict(
                df, model_path, inputs=text, output="embedding", keep=["id"], **extra
            )

        return make

    def pbu(sort: bool):
        def make():
            # A new UDF per run, as a new job makes: its model cache key is fresh.
            udf = predict_batch_udf(
                T.predict_fn_factory(
                    cfg["tokenizer"], cfg["state"], cfg["size"], cfg["vocab"], cfg["threads"]
                ),
                return_type=ArrayType(FloatType()),
                batch_size=cfg["batch"],
            )
            source = df.sortWithinPartitions(F.length("text")) if sort else df
            return source.select("id", udf("text").alias("embedding"))

        return make

    spark_methods: dict[str, Callable] = {
        "ts": ts(None),
        "ts-2048": ts(2048),
        "pbu": pbu(False),
        "pbu-sorted": pbu(True),
        "pandas": lambda: df.mapInPandas(make_pandas_fn(cfg), OUT_SCHEMA),
    }

    def daft_frame():
        import daft

        embed = make_daft_embedder(cfg)
        frame = daft.read_parquet(path)
        return frame.select("id", embed(frame["text"]).alias("embedding"))

    texts = pq.read_table(path).column("text").to_pylist()

    def eager_run() -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.eager_threads)  # one process, both cores by default
        try:
            return eager_embed(texts, cfg, model)
        finally:
            torch.set_num_threads(threads)

    # Each method: a checked run over every row (also its warm-up), then a timed one.
    checked: dict[str, Callable[[], None]] = {}
    errors: dict[str, str] = {}
    diffs: list[str] = []
    for name in args.methods:
        out_dir = os.path.join(os.path.dirname(path), f"out_{name}")
        try:
            if name in spark_methods:
                spark_methods[name]().write.mode("overwrite").parquet(out_dir)
                got = read_embeddings(out_dir, rows)
                timed = lambda make=spark_methods[name]: spark_bench.sink(make())  # noqa: E731
            elif name == "daft":
                got = read_embeddings(daft_frame().to_arrow(), rows)
                timed = lambda: daft_frame().collect()  # noqa: E731
            else:
                got = eager_run()
                timed = eager_run
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{name}: FAILED before timing: {errors[name]}")
            if os.environ.get("TEXT_BENCH_TRACEBACK"):
                traceback.print_exc()
            continue
        diff = float(np.abs(got - expected).max())
        if got.shape != expected.shape or not diff <= T.TOLERANCE:
            errors[name] = f"embeddings differ from the reference by {diff:.3g}"
            print(f"{name}: FAILED the check: {errors[name]}")
            continue
        diffs.append(f"{name} {diff:.1e}")
        checked[name] = timed
    if diffs:
        print(f"every row checked against the reference (max |diff|): {', '.join(diffs)}")

    cases = [_bench.Case(name, fn) for name, fn in checked.items()]
    for _ in range(args.repeats):
        for case in cases:
            t = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - t)
    return cases, errors


def report(args: argparse.Namespace, cases: list[_bench.Case], failed: dict[str, str]) -> None:
    by = {c.name: c for c in cases}
    ts_cases = [by[m] for m in TS_METHODS if m in by]
    headers = ["method", "median s", "min s", "rows/s"] + [f"{c.name} speedup" for c in ts_cases]
    rows = []
    for c in cases:
        rows.append(
            [
                c.name,
                f"{c.median:.3f}",
                f"{c.min:.3f}",
                f"{args.rows / c.median:,.1f}",
                *(_bench.ratio(c.median / t.median) for t in ts_cases),
            ]
        )
    for name, error in failed.items():
        rows.append([name, "-", "-", f"FAILED: {error}"] + ["-"] * len(ts_cases))
    print(_bench.table(headers, rows))
    for t in ts_cases:
        verdicts = []
        if "pbu" in by:
            r = by["pbu"].median / t.median
            verdicts.append(f"vs pbu {r:.2f}x (target >= 1.5: {'met' if r >= 1.5 else 'NOT met'})")
        peers = [by[m] for m in ("pbu-sorted", "pandas", "daft") if m in by]
        if peers:
            best = min(peers, key=lambda c: c.median)
            r = best.median / t.median
            verdicts.append(
                f"vs best of {'/'.join(c.name for c in peers)} ({best.name}) {r:.2f}x "
                f"(target > 1: {'met' if r > 1 else 'NOT met'})"
            )
        if "eager" in by:
            r = by["eager"].median / t.median
            verdicts.append(
                f"vs eager {r:.2f}x (target >= 0.85: {'met' if r >= 0.85 else 'NOT met'})"
            )
        if verdicts:
            print(f"{t.name}: " + "; ".join(verdicts))
    if args.small:
        print("(--small: a smoke run of the tiny model, not a measurement)")
    print(
        f"times: wall s per run over {args.repeats} interleaved repeat(s) after a checked run; "
        "speedup = the method's median time / the torchspark method's"
    )


if __name__ == "__main__":
    sys.exit(main())
