"""Engine benchmarks: overlap, per-batch overhead, token budgets, memory.

Workloads (all on the CPU, in one process, ratios against baselines measured in
the same run):

* overlap: a simulated device. The model is one call of
  ``torch.ops.torchspark_test.simulated_kernel`` from the test op library
  (tests/csrc/test_ops.cpp, loaded by tests/op_library.py, which builds it
  with ``bash .ci/ctest --build-only`` if missing; sleeps ``C`` ms, leaving the CPU
  free, as a GPU kernel would); each batch is staged by gathering 16 float64
  Arrow columns x ``rows`` into float32 (a real copy of known cost ``S``,
  calibrated first so that ``C`` ~= ``S``). Throughput with ``inflight=1`` is
  compared with ``1/(S + C)``, with ``inflight=2`` against ``1/max(S, C)``
  (target: >= 90 %).
* overhead: an identity model over 1,024-row float32 batches: ``Engine.map``
  (every batch through the batcher and a worker thread, as on the Arrow path
  ``predict`` uses), a loop of ``Engine.run`` (inline on the caller's thread:
  the model is cheap and the engine idle), against the Python loop a user
  would write (``torch.from_numpy`` + ``model(x)`` on the same batches, same
  TorchScript model, same threads). Target: < 30 us per batch end to end.
* tokens: a model over right-padded token ids with a skewed length
  distribution (most rows short, a few long), fixed-size batches vs a
  ``max_tokens`` budget with length sorting: rows/s and padding ratio.
* memory: resident set size over 10,000 batches (``--quick``: 2,000).
* mlp: a real-sized MLP (256-1024-1024-1, ReLU, float32) over 65,536 rows
  (``--quick``: 16,384) of ``[N, 256]`` float32 arriving as separate numpy
  chunks of 1,024 and of 4,096 rows (as Spark's Arrow batches do).
  ``Engine(batch_size=chunk, threads=1).map`` on ``torch.from_numpy`` of each
  chunk, against the loop a user would write (``with torch.inference_mode():
  for c in chunks: model(torch.from_numpy(c))``) with the same eager module, and
  the same loop calling the TorchScript module (``torch.jit.load`` of the file
  the engine runs). With 1,024-row chunks the engine is also run with
  ``batch_size=4096``, coalescing four chunks per model call. Same torch
  intra-op threads everywhere (printed). Outputs are checked against eager
  once before timing.
* transformer: a small transformer encoder (``Embedding(1000, 128)``, two
  ``TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256,
  batch_first=True)`` with the pad mask, masked mean pool, ``Linear(128, 1)``)
  over right-padded int64 token ids ``[N, 64]`` (true lengths 8..64, pad id 0),
  16,384 rows (``--quick``: 4,096) in 512-row chunks: engine vs eager loop vs
  TorchScript loop, outputs checked against eager first. Exported with
  ``torchspark.export(format="torchscript")``, which traces the ``eval()`` copy
  under ``no_grad``: there ``TransformerEncoderLayer`` takes its fused fast path
  (``torch._transformer_encoder_layer_fwd``), the trace records that op, and
  the archive runs the same kernels as the eager loop under
  ``inference_mode`` (outputs equal; tracing neither fails nor drifts, and the
  traced op is the fast path whatever the grad mode at run time). The encoder
  is built with ``enable_nested_tensor=False``: the default (``True``) also
  traces and matches, but bakes a prototype padded-to-nested conversion
  (``torch._nested_tensor_from_mask``, with a warning) into the archive and
  was not faster on these lengths in a quick check; the padded fast path is
  the variant that is the same in eager and TorchScript.

Select workloads with ``--workloads mlp,transformer`` (comma-separated; default
all) or ``--only NAME``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
import _bench
import op_library

import torchspark


class Simulated(torch.nn.Module):
    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchspark_test.simulated_kernel(x, self.ms)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TokenModel(torch.nn.Module):
    """Mean of token embeddings, ignoring pad id 0, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 64)
        self.head = torch.nn.Linear(64, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)


class MLP(torch.nn.Module):
    """256-1024-1024-1 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(256, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(torch.nn.Module):
    """Embedding, two encoder layers with the pad mask, masked mean pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 128, padding_idx=0)
        layer = torch.nn.TransformerEncoderLayer(
            d_model=128, nhead=4, dim_feedforward=256, batch_first=True
        )
        # See the module docstring: the padded fast path, not nested tensors.
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(128, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        x = self.encoder(self.embed(tokens), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def overlap(workdir: str, quick: bool) -> None:
    op_library.load()  # torch.ops.torchspark_test.simulated_kernel
    rows = 32768
    batches = 30 if quick else 80
    rng = np.random.default_rng(0)
    batch = pa.record_batch({f"c{j}": rng.standard_normal(rows) for j in range(16)})
    spec = [torchspark.Input([f"c{j}" for j in range(16)])]

    def run(ms: float, inflight: int) -> tuple[float, dict]:
        path = os.path.join(workdir, f"sim_{ms:.3f}.pt")
        torchspark.export(Simulated(ms), (torch.ones(2, 16),), path)
        with torchspark.Engine(path, batch_size=rows, inflight=inflight, inputs=spec) as ex:
            for _ in ex.map([batch] * 5):  # warm up
                pass
            t0 = time.perf_counter()
            for _ in ex.map([batch] * batches):
                pass
            wall = time.perf_counter() - t0
            return batches / wall, ex.stats()

    # Calibrate: the staging cost S of one batch, with a free model.
    _, stats = run(0.0, 1)
    stage_ms = stats["stage"]["p50_ms"]
    compute_ms = max(1.0, stage_ms)
    results = []
    for inflight in (1, 2, 3):
        rate, stats = run(compute_ms, inflight)
        s, c = stats["stage"]["p50_ms"], stats["compute"]["p50_ms"]
        serial, overlapped = 1e3 / (s + c), 1e3 / max(s, c)
        results.append(
            [
                inflight,
                f"{s:.2f}",
                f"{c:.2f}",
                f"{rate:.1f}",
                f"{serial:.1f}",
                f"{overlapped:.1f}",
                _bench.ratio(rate / serial),
                f"{100 * rate / overlapped:.0f} %",
            ]
        )
    print(f"## overlap: {rows} rows x 16 float64 columns gathered per batch, {batches} batches")
    print(
        _bench.table(
            [
                "inflight",
                "stage S ms (p50)",
                "compute C ms (p50)",
                "batches/s",
                "1/(S+C)",
                "1/max(S,C)",
                "vs 1/(S+C)",
                "of 1/max(S,C)",
            ],
            results,
        )
    )
    print()


def overhead(workdir: str, quick: bool) -> None:
    n_batches = 2000 if quick else 10000
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(1024 * 16, dtype=np.float32) for _ in range(64)]
    tensors = [torch.from_numpy(a).view(1024, 16) for a in arrays]
    path = os.path.join(workdir, "identity.pt")
    torchspark.export(Identity(), (torch.ones(2, 16),), path)
    model = torch.jit.load(path)

    def loop() -> None:
        with torch.inference_mode():
            for i in range(n_batches):
                model(torch.from_numpy(arrays[i % 64]).view(1024, 16))

    # map: every batch through the batcher and a worker thread; run: inline.
    engines = {
        "map": torchspark.Engine(path, batch_size=1024, inflight=2, max_delay_ms=0.0),
        "run": torchspark.Engine(path, batch_size=1024, inflight=2, max_delay_ms=0.0),
    }

    def through_map() -> None:
        for _ in engines["map"].map(tensors[i % 64] for i in range(n_batches)):
            pass

    def through_run() -> None:
        for i in range(n_batches):
            engines["run"].run(tensors[i % 64])

    methods = {"map": through_map, "run": through_run, "loop": loop}
    for fn in methods.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(3 if quick else 5):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n_batches)
    inline = {name: ex.stats()["inline_batches"] for name, ex in engines.items()}
    for ex in engines.values():
        ex.close()
    lp = np.median(times["loop"])
    labels = {
        "map": f"Engine.map (batcher + worker thread; {inline['map']} inline)",
        "run": f"loop of Engine.run ({inline['run']} batches inline)",
        "loop": "Python loop: from_numpy + model(x)",
    }
    print(f"## overhead: identity model, 1024 x 16 float32 batches, {n_batches} per round")
    print(
        _bench.table(
            ["method", "per batch (median)", "min", "vs loop"],
            [
                [
                    labels[name],
                    f"{np.median(t) * 1e6:.1f} us",
                    f"{min(t) * 1e6:.1f} us",
                    _bench.ratio(lp / np.median(t)),
                ]
                for name, t in times.items()
            ],
        )
    )
    print("(vs loop > 1x: faster than the loop)\n")


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _drain(outputs: Any) -> None:
    for _ in outputs:
        pass


def tokens(workdir: str, quick: bool) -> None:
    rng = np.random.default_rng(2)
    n = 20000 if quick else 60000
    # Skewed: 90 % of rows 4..32 tokens, 10 % 200..256.
    lengths = np.where(rng.random(n) < 0.9, rng.integers(4, 33, n), rng.integers(200, 257, n))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(1, 1000, offsets[-1]).astype(np.int32)
    col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    batch = pa.record_batch({"tokens": col})
    path = os.path.join(workdir, "tokens.pt")
    torch.manual_seed(0)
    torchspark.export(TokenModel(), (torch.randint(1, 1000, (4, 16)),), path)
    spec = [torchspark.Input("tokens", kind="pad", dtype=torch.int64)]
    configs = [
        ("fixed 256 rows", dict(batch_size=256)),
        ("max_tokens 16384", dict(batch_size=4096, max_tokens=16384)),
        (
            "max_tokens 16384 + sort_window 4096",
            dict(batch_size=4096, max_tokens=16384, sort_window=4096),
        ),
    ]
    rows_out = []
    reference = None
    base = None
    for name, options in configs:
        with torchspark.Engine(path, inputs=spec, **options) as ex:
            ex.run(batch.slice(0, 1000))
            walls = []
            for _ in range(3):
                t0 = time.perf_counter()
                out = ex.run(batch)
                walls.append(time.perf_counter() - t0)
            wall = float(np.median(walls))
            stats = ex.stats()
        if reference is None:
            reference = out
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        rate = n / wall
        base = base or rate
        rows_out.append(
            [
                name,
                f"{rate:,.0f}",
                f"{stats['padding_ratio']:.2f}",
                f"{stats['mean_batch_rows']:.0f}",
                _bench.ratio(rate / base),
            ]
        )
    print(
        f"## tokens: {n} rows, 90 % of 4-32 tokens and 10 % of 200-256, embedding-mean model "
        "(median of 3 runs)"
    )
    print(
        _bench.table(
            ["batching", "rows/s", "padding ratio", "mean batch rows", "vs fixed"], rows_out
        )
    )
    print()


def memory(workdir: str, quick: bool) -> None:
    n_batches = 2000 if quick else 10000
    path = os.path.join(workdir, "identity.pt")
    if not os.path.exists(path):  # overhead was not selected
        torchspark.export(Identity(), (torch.ones(2, 16),), path)
    x = torch.randn(1024, 16)
    marks = []
    with torchspark.Engine(path, batch_size=1024, max_delay_ms=0.0) as ex:
        for i, _ in enumerate(ex.map(x for _ in range(n_batches))):
            if i % (n_batches // 5) == 0:
                marks.append((i, rss_mib()))
        marks.append((n_batches, rss_mib()))
    print(f"## memory: resident set size over {n_batches} batches of 1024 x 16 float32")
    print(_bench.table(["batches done", "RSS MiB"], [[i, f"{m:.1f}"] for i, m in marks]))
    growth = marks[-1][1] - marks[1][1]
    print(f"growth after the first fifth: {growth:+.1f} MiB\n")


def _model_vs_loops(
    title: str,
    eager: torch.nn.Module,
    path: str,
    chunks: list[np.ndarray],
    engines: list[tuple[str, int, float]],
    rounds: int,
    tol: float,
) -> None:
    """Engine.map vs the eager and TorchScript Python loops over the same chunks.

    ``engines``: (label, batch_size, max_delay_ms) of each engine case.
    Prints rows/s and ratios against both loops, timed interleaved.
    """
    n = sum(len(c) for c in chunks)
    scripted = torch.jit.load(path)

    def loop(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for c in chunks:
                    model(torch.from_numpy(c))

        return run

    def engine(ex: torchspark.Engine) -> Callable[[], None]:
        def run() -> None:
            for _ in ex.map(torch.from_numpy(c) for c in chunks):
                pass

        return run

    # Check once (this also warms every path up): outputs match eager.
    with torch.inference_mode():
        reference = torch.cat([eager(torch.from_numpy(c)) for c in chunks])
        scripted_out = torch.cat([scripted(torch.from_numpy(c)) for c in chunks])
    torch.testing.assert_close(scripted_out, reference, rtol=tol, atol=tol)
    opened = []
    for label, batch_size, delay in engines:
        ex = torchspark.Engine(path, batch_size=batch_size, threads=1, max_delay_ms=delay)
        out = torch.cat(list(ex.map(torch.from_numpy(c) for c in chunks)))
        torch.testing.assert_close(out, reference, rtol=tol, atol=tol)
        opened.append((label, ex))
    # Read after the engines exist: the engine may resize torch's pool.
    threads = torch.get_num_threads()

    eager_case = _bench.Case("Python loop: eager module", loop(eager))
    script_case = _bench.Case("Python loop: TorchScript module", loop(scripted))
    engine_cases = [_bench.Case(label, engine(ex)) for label, ex in opened]
    # The pass that checked outputs was the warm-up.
    _bench.run_interleaved([*engine_cases, eager_case, script_case], rounds, warmup=0)
    stats = {label: ex.stats() for label, ex in opened}
    batch_rows = {label: st["mean_batch_rows"] for label, st in stats.items()}
    for _, ex in opened:
        ex.close()

    chunk = len(chunks[0])
    rows = []
    for case in [*engine_cases, eager_case, script_case]:
        rows.append(
            [
                case.name,
                f"{batch_rows.get(case.name, chunk):.0f}",
                _bench.tm(case),
                f"{n / case.median:,.0f}",
                f"{_bench.ratio(eager_case.median / case.median)} "
                f"({_bench.ratio(eager_case.min / case.min)})",
                f"{_bench.ratio(script_case.median / case.median)} "
                f"({_bench.ratio(script_case.min / case.min)})",
            ]
        )
    assert torch.get_num_threads() == threads, "torch threads changed during timing"
    print(f"{title}; torch threads {threads} in every case, engine threads=1")
    print(
        _bench.table(
            [
                "method",
                "rows per model call",
                "per pass (median (min))",
                "rows/s (median)",
                "vs eager loop: median (min)",
                "vs TorchScript loop: median (min)",
            ],
            rows,
        )
    )
    for label, st in stats.items():
        print(
            f"{label}: per batch p50 stage {st['stage']['p50_ms']:.2f} ms, "
            f"compute {st['compute']['p50_ms']:.2f} ms, "
            f"end to end {st['end_to_end']['p50_ms']:.2f} ms over {st['batches']} batches"
        )
    for case in (eager_case, script_case):
        print(f"{case.name}: per model call {_bench.fmt_time(case.median / len(chunks))} (median)")
    print(
        "(vs ... > 1x: faster than that loop; ratio of medians, of minima in brackets; "
        f"outputs matched eager within {tol:g})\n"
    )


def mlp(workdir: str, quick: bool, rounds: int) -> None:
    n = 16384 if quick else 65536
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    eager = MLP().eval()
    path = os.path.join(workdir, "mlp.pt")
    torchspark.export(eager, (torch.randn(4, 256),), path, format="torchscript")
    for chunk in (1024, 4096):
        # Separate buffers, one per chunk, as Arrow batches arrive.
        chunks = [rng.standard_normal((chunk, 256), dtype=np.float32) for _ in range(n // chunk)]
        engines = [(f"torchspark Engine.map, batch_size={chunk}", chunk, 0.0)]
        if chunk < 4096:
            # Default max_delay_ms (2 ms) so that chunks coalesce into full batches.
            engines.append(("torchspark Engine.map, batch_size=4096", 4096, 2.0))
        _model_vs_loops(
            f"## mlp: 256-1024-1024-1 ReLU float32, {n} rows in {chunk}-row numpy chunks",
            eager,
            path,
            chunks,
            engines,
            rounds,
            tol=1e-4,
        )


def transformer(workdir: str, quick: bool, rounds: int) -> None:
    n, length, chunk = (4096 if quick else 16384), 64, 512
    rng = np.random.default_rng(4)
    lengths = rng.integers(8, length + 1, n)
    ids = rng.integers(1, 1000, (n, length))
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    chunks = [np.ascontiguousarray(ids[i : i + chunk]) for i in range(0, n, chunk)]
    torch.manual_seed(0)
    eager = TinyTransformer().eval()
    path = os.path.join(workdir, "transformer.pt")
    example = torch.from_numpy(chunks[0][:4])
    torchspark.export(eager, (example,), path, format="torchscript")
    _model_vs_loops(
        f"## transformer: 2 encoder layers d_model 128, {n} rows of int64 token ids "
        f"padded to {length} (mean length {lengths.mean():.1f}), {chunk}-row numpy chunks",
        eager,
        path,
        chunks,
        [(f"torchspark Engine.map, batch_size={chunk}", chunk, 0.0)],
        rounds,
        tol=1e-4,
    )


def main() -> None:
    parser = _bench.parser(__doc__, default_rounds=5, quick_rounds=3)
    names = ["overlap", "overhead", "tokens", "memory", "mlp", "transformer"]
    parser.add_argument("--only", choices=names, help="run one workload")
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated workloads to run (default all): {','.join(names)}",
    )
    args = _bench.finish_args(parser.parse_args())
    selected = names
    if args.workloads:
        selected = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = [w for w in selected if w not in names]
        if unknown:
            parser.error(f"--workloads: unknown {unknown}; choose from {names}")
    if args.only:
        selected = [args.only]
    _bench.header("engine_bench", args)
    with tempfile.TemporaryDirectory() as workdir:
        workloads: dict[str, Callable[[], None]] = {
            "overlap": lambda: overlap(workdir, args.quick),
            "overhead": lambda: overhead(workdir, args.quick),
            "tokens": lambda: tokens(workdir, args.quick),
            "memory": lambda: memory(workdir, args.quick),
            "mlp": lambda: mlp(workdir, args.quick, args.rounds),
            "transformer": lambda: transformer(workdir, args.quick, args.rounds),
        }
        for name in names:
            if name in selected:
                workloads[name]()
    _bench.footer()


if __name__ == "__main__":
    main()
