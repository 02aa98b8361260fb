"""Arrow -> tensor import: ``torchspark.to_tensor`` against what a user writes today.

Workload (one process, data generated once with numpy, fixed seed):

* primitive: a ``float32`` pyarrow array (no nulls, wrapping a numpy buffer) of
  1e4, 1e6 and 1e8 rows (1e8 rows = 400 MB; ``--quick`` stops at 1e6).
  torchspark: ``torchspark.to_tensor(col)``.
  baseline:   ``torch.from_numpy(col.to_numpy())`` (pyarrow -> numpy -> torch,
  zero-copy for a primitive column without nulls).
  Both should be O(1): the table prints the time per size and the ratio of the
  largest size's time to the 1e4 one.
* list: a ``list<float>`` column of N rows x 256 (int32 offsets, as Spark's
  ``array<float>`` arrives), N = 1e4 and 1e6 (1e6 x 256 float32 = 1 GB;
  ``--quick``: 1e4 and 1e5), plus the same values as ``fixed_size_list<float>[256]``.
  torchspark: ``torchspark.to_tensor(col)`` -> ``[N, 256]`` view. For ``list``
  it checks that every row has the same length, an O(N) pass over the offsets
  (reported as ns per row); ``fixed_size_list`` needs no such pass.
  baselines, a user would write one of:
    (a) ``torch.from_numpy(col.values.to_numpy().reshape(n, 256))`` -- zero-copy
        but checks nothing (a ragged column silently gives wrong rows);
    (b) (a) plus the check a careful user adds:
        ``(np.diff(col.offsets.to_numpy()) == 256).all()`` -- same guarantee as
        torchspark;
    (c) ``torch.from_numpy(np.stack(col.to_numpy(zero_copy_only=False)))`` --
        the generic route: one numpy array per row, then a full copy. Slow, so
        it is timed with fewer rounds (printed) and, in full mode, on 1e6 rows.

Every torchspark result is checked against the baseline (equal values, and the
same data pointer where both are zero-copy) before timing.

Run: ``python benchmarks/arrow_import_bench.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import gc
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
    tm,
)

import torchspark

D = 256
# The baselines wrap read-only Arrow memory, as a user's code would; torch warns once.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def primitive(sizes: list[int], rounds: int) -> None:
    rng = np.random.default_rng(0)
    biggest = rng.random(max(sizes), dtype=np.float32)
    rows = []
    ts_times: dict[int, Case] = {}
    base_times: dict[int, Case] = {}
    for n in sizes:
        col = pa.array(biggest[:n])  # zero-copy wrap of the numpy buffer
        ts = torchspark.to_tensor(col)
        ref = torch.from_numpy(col.to_numpy())
        assert ts.dtype == torch.float32 and ts.shape == (n,)
        assert torch.equal(ts, ref), "to_tensor values differ from the numpy route"
        zero_copy = ts.data_ptr() == ref.data_ptr() == biggest.ctypes.data
        del ts, ref
        c_ts = Case("torchspark.to_tensor", lambda col=col: torchspark.to_tensor(col))
        c_np = Case(
            "torch.from_numpy(col.to_numpy())",
            lambda col=col: torch.from_numpy(col.to_numpy()),
        )
        run_interleaved([c_ts, c_np], rounds=rounds)
        ts_times[n], base_times[n] = c_ts, c_np
        rows.append(
            [
                f"{n:.0e}",
                f"{n * 4 / 1e6:g} MB",
                tm(c_ts),
                tm(c_np),
                ratio(c_np.median / c_ts.median),
                "yes" if zero_copy else "NO",
            ]
        )
    print("## float32 column -> 1-D tensor (both zero-copy)")
    print(
        table(
            [
                "rows",
                "bytes",
                "torchspark to_tensor",
                "baseline from_numpy(to_numpy())",
                "baseline / ts (>1: ts faster)",
                "zero-copy",
            ],
            rows,
        )
    )
    lo, hi = min(sizes), max(sizes)
    print(
        f"size scaling (median time at {hi:.0e} / at {lo:.0e} rows): "
        f"torchspark {ts_times[hi].median / ts_times[lo].median:.2f}, "
        f"baseline {base_times[hi].median / base_times[lo].median:.2f} "
        f"(1.0 = constant time; the data grew {hi // lo}x)"
    )
    print()


def make_list(n: int, values: np.ndarray) -> tuple[pa.Array, pa.Array]:
    offsets = pa.array(np.arange(0, (n + 1) * D, D, dtype=np.int32))
    flat = pa.array(values[: n * D])
    lst = pa.ListArray.from_arrays(offsets, flat, type=pa.list_(pa.field("element", pa.float32())))
    fsl = pa.FixedSizeListArray.from_arrays(flat, D)
    return lst, fsl


def lists(sizes: list[int], rounds: int, stack_rows: int, stack_rounds: int) -> None:
    rng = np.random.default_rng(1)
    values = rng.random(max(sizes) * D, dtype=np.float32)
    rows = []
    per_row: list[str] = []

    def user_reshape(col: pa.Array, n: int) -> torch.Tensor:
        return torch.from_numpy(col.values.to_numpy().reshape(n, D))

    def user_checked(col: pa.Array, n: int) -> torch.Tensor:
        if not (np.diff(col.offsets.to_numpy()) == D).all():
            raise ValueError("ragged")
        return torch.from_numpy(col.values.to_numpy().reshape(n, D))

    def user_stack(col: pa.Array) -> torch.Tensor:
        return torch.from_numpy(np.stack(col.to_numpy(zero_copy_only=False)))

    for n in sizes:
        lst, fsl = make_list(n, values)
        ts = torchspark.to_tensor(lst)
        ts_fsl = torchspark.to_tensor(fsl)
        ref = user_reshape(lst, n)
        assert ts.shape == (n, D) and ts_fsl.shape == (n, D)
        assert torch.equal(ts, ref) and torch.equal(ts_fsl, ref)
        assert torch.equal(user_checked(lst, n), ref)
        zero_copy = ts.data_ptr() == ts_fsl.data_ptr() == ref.data_ptr() == values.ctypes.data
        del ts, ts_fsl, ref
        cases = [
            Case("ts list", lambda c=lst: torchspark.to_tensor(c)),
            Case("ts fsl", lambda c=fsl: torchspark.to_tensor(c)),
            Case("(a) reshape", lambda c=lst, n=n: user_reshape(c, n)),
            Case("(b) reshape+check", lambda c=lst, n=n: user_checked(c, n)),
        ]
        run_interleaved(cases, rounds=rounds)
        ts_l, ts_f, a, b = cases
        rows.append(
            [
                f"{n:.0e} x {D}",
                "list",
                tm(ts_l),
                tm(a),
                tm(b),
                ratio(a.median / ts_l.median),
                ratio(b.median / ts_l.median),
                "yes" if zero_copy else "NO",
            ]
        )
        rows.append(
            [
                f"{n:.0e} x {D}",
                "fixed_size_list",
                tm(ts_f),
                "",
                "",
                ratio(a.median / ts_f.median),
                ratio(b.median / ts_f.median),
                "yes" if zero_copy else "NO",
            ]
        )
        per_row.append(
            f"{n:.0e} rows: list {ts_l.median / n * 1e9:.2f} ns/row, "
            f"fixed_size_list {ts_f.median / n * 1e9:.3f} ns/row, "
            f"(b) {b.median / n * 1e9:.2f} ns/row"
        )
        del lst, fsl, cases
        gc.collect()

    print(f"## list<float> [N x {D}] -> [N, {D}] tensor")
    print(
        table(
            [
                "shape",
                "arrow type",
                "torchspark to_tensor",
                "(a) reshape .values",
                "(b) (a) + length check",
                "(a) / ts",
                "(b) / ts",
                "zero-copy",
            ],
            rows,
        )
    )
    print("(a) = torch.from_numpy(col.values.to_numpy().reshape(n, 256)): no length check")
    print("(b) = (a) after (np.diff(col.offsets.to_numpy()) == 256).all(): same check as ts")
    print("time per row (the O(N) offsets validation of list; fixed_size_list has none):")
    for line in per_row:
        print("  " + line)

    # (c) the generic copy route, on its own (slow).
    lst, _ = make_list(stack_rows, values)
    ref = torchspark.to_tensor(lst)
    assert torch.equal(user_stack(lst), ref)
    c_ts = Case("ts", lambda: torchspark.to_tensor(lst))
    c_stack = Case("stack", lambda: user_stack(lst))
    run_interleaved([c_ts], rounds=rounds)
    run_interleaved([c_stack], rounds=stack_rounds, min_round_s=0.0, warmup=0)
    print()
    print(
        table(
            ["shape", "torchspark to_tensor", "(c) np.stack(col.to_numpy(...))", "ratio"],
            [
                [
                    f"{stack_rows:.0e} x {D}",
                    tm(c_ts),
                    f"{tm(c_stack)} [{stack_rounds} rounds]",
                    f"(c) takes {c_stack.median / c_ts.median:,.0f}x as long",
                ]
            ],
        )
    )
    print(
        f"(c) copies {stack_rows * D * 4 / 1e9:.2f} GB at "
        f"{stack_rows * D * 4 / c_stack.median / 1e9:.2f} GB/s; "
        f"torchspark does not copy ({fmt_time(c_ts.median)})"
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, default_rounds=15, quick_rounds=5)
    args = finish_args(p.parse_args(argv))
    header("arrow_import_bench: torchspark.to_tensor vs pyarrow -> numpy -> torch", args)
    if args.quick:
        primitive([10**4, 10**6], args.rounds)
        lists([10**4, 10**5], args.rounds, stack_rows=10**4, stack_rounds=3)
    else:
        primitive([10**4, 10**6, 10**8], args.rounds)
        lists([10**4, 10**6], args.rounds, stack_rows=10**6, stack_rounds=3)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
