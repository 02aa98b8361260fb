"""Ragged token lists -> padded [N, L]: ``torchspark.pad`` against numpy and torch code.

Workload: a ``list<int32>`` pyarrow column of N = 1e6 rows (``--quick``: 1e5)
whose lengths are uniform random in 1..128 (numpy ``default_rng(0)``; ~64.5e6
token ids, ~258 MB) -> ``([N, 128] int32 values, [N] lengths)`` padded with 0
(~512 MB out). GB/s figures are output bytes of the padded values / time.

Cases, timed interleaved in the same process (all of them produce the padded
``[N, L]`` values and the lengths, as tensors):

* ``torchspark.pad(col, pad_value=0)``, with ``torch.set_num_threads(1)`` and
  with torch's default thread count.
* numpy, mask scatter (the best vectorised version I could write)::

      offsets = col.offsets.to_numpy(); values = col.values.to_numpy()
      lengths = np.diff(offsets); L = lengths.max()
      out = np.full((n, L), pad, np.int32)
      out[np.arange(L) < lengths[:, None]] = values[offsets[0]:offsets[-1]]

* numpy, index scatter: the np.repeat / arange version of the same::

      rows = np.repeat(np.arange(n), lengths)
      cols = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lengths)
      out[rows, cols] = values[offsets[0]:offsets[-1]]

* torch ``pad_sequence``: what a PyTorch user reaches for,
  ``pad_sequence(torch.split(values, lengths.tolist()), batch_first=True)``
  (fewer rounds: it is slow).
* reference rows (not padding): ``torch.full((N, L), 0, dtype=torch.int32)``
  and ``np.full((N, L), 0, dtype=np.int32)``, the cost of allocating and
  touching a fresh output of that size alone (first-touch page faults; numpy
  madvises transparent huge pages for large arrays, torch's CPU allocator only
  when the environment sets ``THP_MEM_ALLOC_ENABLE=1``, read at torch start-up).
  torchspark.pad allocates its output with torch, so that variable changes its
  time too: run the script with and without it.
* a plain Python loop over rows (``out[i, :len] = values[s:e]``), run ONLY on
  the first 1e4 rows (``col.slice(0, 10_000)``) and compared with
  ``torchspark.pad`` on the same 1e4 rows in its own table. No figure is extrapolated to N.

All outputs are checked to be identical (values and lengths) before timing.

Run: ``python benchmarks/pad_bench.py`` (``--quick`` for a smoke run), and
``THP_MEM_ALLOC_ENABLE=1 python benchmarks/pad_bench.py`` for huge-page torch allocations.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pyarrow as pa
import torch
from _bench import (
    Case,
    finish_args,
    fmt_time,
    footer,
    header,
    parser,
    ratio,
    run_interleaved,
    table,
    thp_mode,
    tm,
)
from torch.nn.utils.rnn import pad_sequence

import torchspark

MAX_LEN = 128
PAD = 0
DEFAULT_THREADS = torch.get_num_threads()
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def make_column(n: int, seed: int = 0) -> pa.ListArray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, MAX_LEN + 1, size=n, dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = rng.integers(1, 50_000, size=int(offsets[-1]), dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def numpy_mask(col: pa.ListArray) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()
    lengths = np.diff(offsets)
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    out = np.full((n, width), PAD, dtype=values.dtype)
    out[np.arange(width) < lengths[:, None]] = values[offsets[0] : offsets[-1]]
    return torch.from_numpy(out), torch.from_numpy(lengths.astype(np.int64))


def numpy_index(col: pa.ListArray) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()
    lengths = np.diff(offsets)
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    total = int(offsets[-1] - offsets[0])
    out = np.full((n, width), PAD, dtype=values.dtype)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lengths)
    out[rows, cols] = values[offsets[0] : offsets[-1]]
    return torch.from_numpy(out), torch.from_numpy(lengths.astype(np.int64))


def torch_pad_sequence(col: pa.ListArray) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.from_numpy(col.offsets.to_numpy())
    values = torch.from_numpy(col.values.to_numpy())
    lengths = (offsets[1:] - offsets[:-1]).long()
    rows = torch.split(values[offsets[0] : offsets[-1]], lengths.tolist())
    return pad_sequence(rows, batch_first=True, padding_value=PAD), lengths


def python_loop(col: pa.ListArray) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy()
    n = len(offsets) - 1
    lengths = np.empty(n, dtype=np.int64)
    for i in range(n):
        lengths[i] = offsets[i + 1] - offsets[i]
    out = np.full((n, int(lengths.max())), PAD, dtype=values.dtype)
    for i in range(n):
        s, e = offsets[i], offsets[i + 1]
        out[i, : e - s] = values[s:e]
    return torch.from_numpy(out), torch.from_numpy(lengths)


def with_threads(threads: int, fn):
    def run() -> object:
        torch.set_num_threads(threads)
        return fn()

    return run


def check_same(name: str, got: tuple[torch.Tensor, torch.Tensor], ref) -> None:
    values, lengths = got
    assert values.dtype == ref[0].dtype, (name, values.dtype, ref[0].dtype)
    assert torch.equal(values, ref[0]), f"{name}: padded values differ from torchspark.pad"
    assert torch.equal(lengths.long(), ref[1]), f"{name}: lengths differ from torchspark.pad"


def main_comparison(col: pa.ListArray, rounds: int, slow_rounds: int) -> None:
    n = len(col)
    ref = torchspark.pad(col, pad_value=PAD)
    assert ref[0].shape == (n, MAX_LEN) and ref[0].dtype == torch.int32
    check_same("numpy mask", numpy_mask(col), ref)
    check_same("numpy index", numpy_index(col), ref)
    check_same("pad_sequence", torch_pad_sequence(col), ref)
    out_bytes = ref[0].numel() * ref[0].element_size()
    tokens = len(col.values)
    del ref

    fast = [
        Case("ts1", with_threads(1, lambda: torchspark.pad(col, pad_value=PAD))),
        Case("tsd", with_threads(DEFAULT_THREADS, lambda: torchspark.pad(col, pad_value=PAD))),
        Case("mask", with_threads(DEFAULT_THREADS, lambda: numpy_mask(col))),
        Case("index", with_threads(DEFAULT_THREADS, lambda: numpy_index(col))),
    ]
    # Reference rows, not padding: the cost of a fresh [N, L] int32 output alone.
    width = MAX_LEN
    floors = [
        Case(
            "tfull",
            with_threads(1, lambda: torch.full((n, width), PAD, dtype=torch.int32)),
        ),
        Case("npfull", lambda: np.full((n, width), PAD, dtype=np.int32)),
    ]
    run_interleaved(fast + floors, rounds=rounds, min_round_s=0.05)
    ps = Case("ps", with_threads(DEFAULT_THREADS, lambda: torch_pad_sequence(col)))
    run_interleaved([ps], rounds=slow_rounds, min_round_s=0.0, warmup=0)
    torch.set_num_threads(DEFAULT_THREADS)
    ts1, tsd, mask, index = fast
    labels = [
        (ts1, "torchspark.pad, 1 thread", ""),
        (tsd, f"torchspark.pad, {DEFAULT_THREADS} threads", ""),
        (mask, "numpy mask scatter", ""),
        (index, "numpy repeat/arange index scatter", ""),
        (ps, "torch pad_sequence(split(...))", f" [{slow_rounds} rounds]"),
    ]
    labels += [
        (floors[0], "ref: torch.full((N, L), 0, int32), 1 thread", ""),
        (floors[1], "ref: np.full((N, L), 0, int32)", ""),
    ]
    rows = [
        [
            label,
            tm(c) + note,
            f"{out_bytes / c.median / 1e9:.2f}",
            f"{c.median / tokens * 1e9:.2f}",
            ratio(c.median / ts1.median),
            ratio(c.median / tsd.median),
        ]
        for c, label, note in labels
    ]
    print(
        f"## pad {n:.0e} ragged int32 lists (lengths 1..{MAX_LEN}, {tokens / 1e6:.1f}M tokens) "
        f"-> [N, {MAX_LEN}] int32 ({out_bytes / 1e6:.0f} MB out)"
    )
    print(
        table(
            [
                "method",
                "time",
                "GB/s out",
                "ns/token",
                "time / ts 1 thread",
                f"time / ts {DEFAULT_THREADS} threads",
            ],
            rows,
        )
    )
    best = min(mask, index, key=lambda c: c.median)
    print(
        f"best numpy ({'mask' if best is mask else 'index'} scatter) takes "
        f"{best.median / ts1.median:.2f}x torchspark.pad's time at 1 thread, "
        f"{best.median / tsd.median:.2f}x at {DEFAULT_THREADS} threads"
    )
    print(
        "ref rows = allocating and filling a fresh output of the same shape, nothing else "
        "(the first-touch floor). numpy madvises transparent huge pages for large arrays; "
        "torch's CPU allocator does so only with THP_MEM_ALLOC_ENABLE=1 "
        f"(here: {os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; THP mode {thp_mode()})."
    )
    print()


def loop_comparison(col: pa.ListArray, rounds: int) -> None:
    n = len(col)
    ref = torchspark.pad(col, pad_value=PAD)
    check_same("python loop", python_loop(col), ref)
    check_same("numpy mask", numpy_mask(col), ref)
    cases = [
        Case("ts", with_threads(DEFAULT_THREADS, lambda: torchspark.pad(col, pad_value=PAD))),
        Case("mask", with_threads(DEFAULT_THREADS, lambda: numpy_mask(col))),
        Case("loop", with_threads(DEFAULT_THREADS, lambda: python_loop(col))),
    ]
    run_interleaved(cases, rounds=rounds, min_round_s=0.05)
    ts = cases[0]
    print(f"## SUBSET ONLY: the first {n:.0e} rows (a slice of the column), Python loop included")
    print(
        table(
            ["method", "time", "time / torchspark.pad"],
            [
                [f"torchspark.pad, {DEFAULT_THREADS} threads", tm(ts), "1x"],
                ["numpy mask scatter", tm(cases[1]), ratio(cases[1].median / ts.median)],
                ["Python loop over rows", tm(cases[2]), ratio(cases[2].median / ts.median)],
            ],
        )
    )
    print(f"(loop per row: {fmt_time(cases[2].median / n)}; measured on {n:.0e} rows only)")
    print()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, default_rounds=7, quick_rounds=3)
    args = finish_args(p.parse_args(argv))
    header("pad_bench: torchspark.pad vs numpy / torch padding", args)
    n = 100_000 if args.quick else 1_000_000
    col = make_column(n)
    main_comparison(col, args.rounds, slow_rounds=2 if args.quick else 3)
    loop_comparison(col.slice(0, 10_000), args.rounds)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
