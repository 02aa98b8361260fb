"""Executor benchmarks: overlap, per-batch overhead, token budgets, memory.

Workloads (all on the CPU, in one process, ratios against baselines measured in
the same run):

* overlap: a simulated device. The model is one call of
  ``torch.ops.torchspark.simulated_kernel`` (sleeps ``C`` ms, leaving the CPU
  free, as a GPU kernel would); each batch is staged by gathering 16 float64
  Arrow columns x ``rows`` into float32 (a real copy of known cost ``S``,
  calibrated first so that ``C`` ~= ``S``). Throughput with ``inflight=1`` is
  compared with ``1/(S + C)``, with ``inflight=2`` against ``1/max(S, C)``
  (target: >= 90 %).
* overhead: an identity model over 1,024-row float32 batches through ``map``,
  against the Python loop a user would write (``torch.from_numpy`` +
  ``model(x)`` on the same batches, same TorchScript model, same threads).
  Target: < 30 us per batch end to end and no slower than the loop.
* tokens: a model over right-padded token ids with a skewed length
  distribution (most rows short, a few long), fixed-size batches vs a
  ``max_tokens`` budget with length sorting: rows/s and padding ratio.
* memory: resident set size over 10,000 batches (``--quick``: 2,000).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _bench

import torchspark


class Simulated(torch.nn.Module):
    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchspark.simulated_kernel(x, self.ms)


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


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def overlap(workdir: str, quick: bool) -> None:
    rows = 32768
    batches = 30 if quick else 80
    rng = np.random.default_rng(0)
    batch = pa.record_batch({f"c{j}": rng.standard_normal(rows) for j in range(16)})
    spec = [torchspark.Input([f"c{j}" for j in range(16)])]

    def run(ms: float, inflight: int) -> tuple[float, dict]:
        path = os.path.join(workdir, f"sim_{ms:.3f}.pt")
        torchspark.export(Simulated(ms), (torch.ones(2, 16),), path)
        with torchspark.Executor(path, batch_size=rows, inflight=inflight, inputs=spec) as ex:
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

    ex = torchspark.Executor(path, batch_size=1024, inflight=2, max_delay_ms=0.0)

    def engine() -> None:
        for _ in ex.map(tensors[i % 64] for i in range(n_batches)):
            pass

    engine()
    loop()
    times = {"engine": [], "loop": []}
    for _ in range(3 if quick else 5):
        for name, fn in (("engine", engine), ("loop", loop)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n_batches)
    ex.close()
    e, lp = np.median(times["engine"]), np.median(times["loop"])
    print(f"## overhead: identity model, 1024 x 16 float32 batches, {n_batches} per round")
    print(
        _bench.table(
            ["method", "per batch (median)", "min", "vs loop"],
            [
                [
                    "torchspark Executor.map",
                    f"{e * 1e6:.1f} us",
                    f"{min(times['engine']) * 1e6:.1f} us",
                    _bench.ratio(lp / e),
                ],
                [
                    "Python loop: from_numpy + model(x)",
                    f"{lp * 1e6:.1f} us",
                    f"{min(times['loop']) * 1e6:.1f} us",
                    "1x",
                ],
            ],
        )
    )
    print("(vs loop > 1x: the executor is faster)\n")


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
        with torchspark.Executor(path, inputs=spec, **options) as ex:
            ex.run(batch.slice(0, 1000))
            t0 = time.perf_counter()
            out = ex.run(batch)
            wall = time.perf_counter() - t0
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
    print(f"## tokens: {n} rows, 90 % of 4-32 tokens and 10 % of 200-256, embedding-mean model")
    print(
        _bench.table(
            ["batching", "rows/s", "padding ratio", "mean batch rows", "vs fixed"], rows_out
        )
    )
    print()


def memory(workdir: str, quick: bool) -> None:
    n_batches = 2000 if quick else 10000
    path = os.path.join(workdir, "identity.pt")
    x = torch.randn(1024, 16)
    marks = []
    with torchspark.Executor(path, batch_size=1024, max_delay_ms=0.0) as ex:
        for i, _ in enumerate(ex.map(x for _ in range(n_batches))):
            if i % (n_batches // 5) == 0:
                marks.append((i, rss_mib()))
        marks.append((n_batches, rss_mib()))
    print(f"## memory: resident set size over {n_batches} batches of 1024 x 16 float32")
    print(_bench.table(["batches done", "RSS MiB"], [[i, f"{m:.1f}"] for i, m in marks]))
    growth = marks[-1][1] - marks[1][1]
    print(f"growth after the first fifth: {growth:+.1f} MiB\n")


def main() -> None:
    parser = _bench.parser(__doc__, default_rounds=5, quick_rounds=3)
    parser.add_argument("--only", choices=["overlap", "overhead", "tokens", "memory"])
    args = _bench.finish_args(parser.parse_args())
    _bench.header("executor_bench", args)
    with tempfile.TemporaryDirectory() as workdir:
        for name, fn in (
            ("overlap", overlap),
            ("overhead", overhead),
            ("tokens", tokens),
            ("memory", memory),
        ):
            if args.only in (None, name):
                fn(workdir, args.quick)
    _bench.footer()


if __name__ == "__main__":
    main()
