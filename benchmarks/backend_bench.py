"""Model backends on the CPU: TorchScript fp32 against ONNX Runtime fp32, int8
(TorchScript and ONNX) and bf16 autocast, on the text-embedding encoder.

Workload: ``--rows`` (default 2,000) sentences from ``torchspark.demo.text``
(lognormal lengths, median 16 words), its WordPiece tokenizer trained here
(~8k tokens, truncation at 256), and ``--size`` (default ``minilm``: 6 layers,
hidden 384, 12 heads, intermediate 1536, random weights from
``transformers``) returning mask-weighted mean-pooled embeddings.

Variants (each one file, run by the same engine with the same text input):

* ``ts-fp32``: the TorchScript trace (``torchspark.demo.text.export_encoder``).
* ``ts-bf16``: the same file with ``precision="bf16"`` (autocast on the CPU).
* ``ts-int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear
  layers, traced the same way.
* ``onnx-fp32``: ``torchspark.export(model, ..., format="onnx")`` (dynamo
  exporter, checked against the module), run by ONNX Runtime.
* ``onnx-int8``: ``torchspark.export(..., format="onnx", quantize="int8")``
  (ONNX Runtime's dynamic quantization), run by ONNX Runtime.

Accuracy: each variant's embeddings of every row against the eager fp32
module's (rows of one token length batched together, no padding): the
minimum cosine similarity over rows and the max |difference|.

Speed, two ways, each timed interleaved (variant by variant, ``--rounds``
times) so load from elsewhere hits all alike; figures are medians, and ratios
are against ``ts-fp32`` from the same rounds:

* engine: ``Engine.run`` over all rows as one Arrow batch, in this process,
  the engine's own thread rule (torch and ORT intra-op pools sized alike);
* Spark: ``torchspark.predict`` over the rows as a cached ``local[2]``
  DataFrame in ``--partitions`` partitions, one torch thread per task,
  ending in ``write.format("noop")`` (``--no-spark`` skips it).

Run from the repository root: ``python benchmarks/backend_bench.py``
(``--quick``: the demo's small encoder, 400 rows, one round).
"""

from __future__ import annotations

import copy
import os
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

import torchspark
from torchspark.demo import text as T

VARIANTS = ("ts-fp32", "ts-bf16", "ts-int8", "onnx-fp32", "onnx-int8")


def parse_args():
    p = _bench.parser(__doc__, default_rounds=3, quick_rounds=1)
    p.add_argument("--rows", type=int, default=None, help="sentences (default 2000)")
    p.add_argument("--size", choices=sorted(T.ENCODERS), default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-spark", action="store_true")
    _bench.spark_run_arguments(p)
    args = _bench.finish_args(p.parse_args())
    args.rows = args.rows or (400 if args.quick else 2000)
    args.size = args.size or ("small" if args.quick else "minilm")
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    return args


def export_variants(model: T.TextEncoder, workdir: str, names: list[str]) -> dict:
    """name -> (path, precision), each file made and checked as described above."""
    vocab = model.bert.config.vocab_size
    example = T.random_batch(4, 24, vocab, torch.Generator().manual_seed(0))
    files: dict[str, tuple[str, str]] = {}
    with T.torch_threads(1):
        if {"ts-fp32", "ts-bf16"} & set(names):
            path = T.export_encoder(model, os.path.join(workdir, "fp32.pt"))
            files["ts-fp32"] = (path, "fp32")
            files["ts-bf16"] = (path, "bf16")
        if "ts-int8" in names:
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
            )
            path = os.path.join(workdir, "int8.pt")
            torchspark.export(T.trace_encoder(quantized), example, path)
            files["ts-int8"] = (path, "fp32")
        for name, quantize in (("onnx-fp32", None), ("onnx-int8", "int8")):
            if name in names:
                path = os.path.join(workdir, f"{name}.onnx")
                torchspark.export(model, example, path, format="onnx", quantize=quantize)
                files[name] = (path, "fp32")
    return {name: files[name] for name in names}


def accuracy(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    cosine = torch.nn.functional.cosine_similarity(
        torch.from_numpy(got).double(), torch.from_numpy(expected).double(), dim=1
    )
    return float(cosine.min()), float(np.abs(got - expected).max())


def main() -> int:
    args = parse_args()
    spark_bench.wait_for_load(args.wait_load)
    _bench.header("backend_bench: TorchScript, ONNX Runtime, int8, bf16 on the CPU", args)
    with tempfile.TemporaryDirectory(prefix="backend_bench_") as workdir:
        sentences = T.make_sentences(args.rows)
        tokenizer = T.train_tokenizer(
            T.make_sentences(20_000, seed=1000), os.path.join(workdir, "tokenizer.json")
        )
        vocab = T.load_tokenizer(tokenizer).get_vocab_size()
        model = T.build_encoder(args.size, vocab)
        t0 = time.perf_counter()
        files = export_variants(model, workdir, args.variants)
        print(f"exports made and checked in {time.perf_counter() - t0:.1f} s:")
        for name, (path, _) in files.items():
            print(f"  {name}: {os.path.getsize(path) / 2**20:.1f} MiB")
        expected, tokens = T.reference_embeddings(sentences, tokenizer, model)
        shape = T.ENCODERS[args.size]
        print(
            f"\n## {args.rows:,} sentences, encoder {args.size} ({shape.layers} layers, hidden "
            f"{shape.hidden}); tokens per row median {np.median(tokens):.0f}, mean "
            f"{tokens.mean():.1f}, max {tokens.max()}\n"
        )
        batch = pa.record_batch({"text": pa.array(sentences)})
        text = torchspark.Input("text", kind="text", tokenizer=tokenizer, max_len=T.MAX_LEN)
        engines = {
            name: torchspark.Engine(path, inputs=text, precision=precision)
            for name, (path, precision) in files.items()
        }
        try:
            figures = {}
            for name, engine in engines.items():
                got = engine.run(batch).numpy()  # also the warm-up
                figures[name] = accuracy(got, expected)
            threads = torch.get_num_threads()
            cases = [
                _bench.Case(name, lambda e=engine: e.run(batch)) for name, engine in engines.items()
            ]
            _bench.run_interleaved(cases, args.rounds, min_round_s=0.0, warmup=0)
        finally:
            for engine in engines.values():
                engine.close()
        report("engine, in this process", cases, args.rows, figures, f"{threads} torch threads")
        if not args.no_spark:
            spark_cases = run_spark(args, files, sentences, tokenizer, workdir)
            report(
                f"Spark local[2] predict, {args.partitions} partitions",
                spark_cases,
                args.rows,
                figures,
                f"{args.threads} torch thread per task",
            )
    _bench.footer()
    return 0


def run_spark(args, files: dict, sentences: list[str], tokenizer: str, workdir: str) -> list:
    spark = spark_bench.start_spark(args)
    try:
        df = spark.createDataFrame(
            [(i, s) for i, s in enumerate(sentences)], "id long, text string"
        ).repartition(args.partitions)
        df = df.cache()
        assert df.count() == args.rows

        def job(path: str, precision: str) -> Callable[[], None]:
            def run() -> None:
                text = torchspark.Input("text", kind="text", tokenizer=tokenizer, max_len=T.MAX_LEN)
                out = torchspark.predict(
                    df, path, inputs=text, output="embedding", keep=["id"], precision=precision
                )
                spark_bench.sink(out)

            return run

        cases = [_bench.Case(name, job(*file)) for name, file in files.items()]
        _bench.run_interleaved(cases, args.rounds, min_round_s=0.0, warmup=1)
        return cases
    finally:
        spark.stop()


def report(title: str, cases: list, rows: int, figures: dict, threads: str) -> None:
    base = next((c for c in cases if c.name == "ts-fp32"), None)
    print(f"### {title} ({threads})\n")
    table = []
    for case in cases:
        cosine, diff = figures[case.name]
        table.append(
            [
                case.name,
                _bench.tm(case),
                f"{rows / case.median:,.1f}",
                _bench.ratio(base.median / case.median) if base else "-",
                f"{cosine:.5f}",
                f"{diff:.2e}",
            ]
        )
    headers = ["variant", "median (min)", "rows/s", "vs ts-fp32", "min cosine", "max |diff|"]
    print(_bench.table(headers, table))
    print()


if __name__ == "__main__":
    sys.exit(main())
