"""Tensor -> Arrow export: ``torchspark.from_tensor`` against the pyarrow code a user writes.

Workload (tensors made once with ``torch.rand``, fixed seed, contiguous CPU float32):

* 2-D ``[N, 16]`` float32, N = 1e4 and 1e6 (``--quick``: 1e4 and 1e5):
  - ``torchspark.from_tensor(t)`` -> ``list<float>`` (Spark's ``array<float>``;
    the default), against the user's
    ``pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * 16, 16, dtype=np.int32)),
    pa.array(t.numpy().ravel()))`` (building the offsets is part of the user's work);
  - ``torchspark.from_tensor(t, fixed_size_list=True)`` -> ``fixed_size_list<float>[16]``,
    against ``pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().ravel()), 16)``.
* 1-D float32 of 1e6 and 1e8 elements (1e8 = 400 MB; ``--quick``: 1e6 only):
  ``torchspark.from_tensor(t)`` against ``pa.array(t.numpy())``. Both are
  zero-copy; the table shows the time per size and the ratio between sizes.

Before timing, every exported array is checked: same Arrow type as the user's,
values equal to the tensor, and whether its value buffer is the tensor's memory
(zero-copy).

Run: ``python benchmarks/arrow_export_bench.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pyarrow as pa
import torch
from _bench import Case, finish_args, footer, header, parser, ratio, run_interleaved, table, tm

import torchspark

D = 16
DEFAULT_THREADS = torch.get_num_threads()


def with_threads(threads: int, fn):
    def run() -> object:
        torch.set_num_threads(threads)
        return fn()

    return run


def values_buffer_address(arr: pa.Array) -> int:
    """Address of the first value of a primitive, list or fixed_size_list array."""
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        child = arr.values
        return child.buffers()[1].address + child.offset * 4
    return arr.buffers()[1].address + arr.offset * 4


def check(arr: pa.Array, t: torch.Tensor, expected_type: pa.DataType) -> bool:
    assert arr.type.equals(expected_type, check_metadata=False) or str(arr.type) == str(
        expected_type
    ), (arr.type, expected_type)
    assert len(arr) == t.shape[0]
    assert arr.null_count == 0
    flat = arr.flatten() if t.dim() == 2 else arr
    assert np.array_equal(flat.to_numpy(), t.numpy().ravel()), "exported values differ"
    return values_buffer_address(arr) == t.data_ptr()


def user_list(t: torch.Tensor) -> pa.Array:
    n, d = t.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(t.numpy().ravel()))


def user_fsl(t: torch.Tensor) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().ravel()), t.shape[1])


def two_d(sizes: list[int], rounds: int) -> None:
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        t = torch.rand(n, D, generator=g)
        zc_ts_l = check(torchspark.from_tensor(t), t, user_list(t).type)
        zc_ts_f = check(
            torchspark.from_tensor(t, fixed_size_list=True), t, pa.list_(pa.float32(), D)
        )
        zc_u_l = check(user_list(t), t, pa.list_(pa.float32()))
        zc_u_f = check(user_fsl(t), t, pa.list_(pa.float32(), D))
        cases = [
            Case("ts list", with_threads(DEFAULT_THREADS, lambda t=t: torchspark.from_tensor(t))),
            Case("user list", lambda t=t: user_list(t)),
            Case("ts fsl", lambda t=t: torchspark.from_tensor(t, fixed_size_list=True)),
            Case("user fsl", lambda t=t: user_fsl(t)),
        ]
        cases.append(Case("ts list 1T", with_threads(1, lambda t=t: torchspark.from_tensor(t))))
        run_interleaved(cases, rounds=rounds)
        torch.set_num_threads(DEFAULT_THREADS)
        ts_l, u_l, ts_f, u_f, ts_l1 = cases
        rows.append(
            [
                f"[{n:.0e}, {D}]",
                "list<float>",
                tm(ts_l),
                f"{ts_l.median / n * 1e9:.3f}",
                "yes" if zc_ts_l else "no",
                "ListArray.from_arrays(offsets, values)",
                tm(u_l),
                "yes" if zc_u_l else "no",
                ratio(u_l.median / ts_l.median),
            ]
        )
        rows.append(
            [
                f"[{n:.0e}, {D}]",
                "list<float>, 1 thread",
                tm(ts_l1),
                f"{ts_l1.median / n * 1e9:.3f}",
                "yes" if zc_ts_l else "no",
                "(same)",
                tm(u_l),
                "yes" if zc_u_l else "no",
                ratio(u_l.median / ts_l1.median),
            ]
        )
        rows.append(
            [
                f"[{n:.0e}, {D}]",
                f"fixed_size_list[{D}]",
                tm(ts_f),
                f"{ts_f.median / n * 1e9:.3f}",
                "yes" if zc_ts_f else "no",
                f"FixedSizeListArray.from_arrays(values, {D})",
                tm(u_f),
                "yes" if zc_u_f else "no",
                ratio(u_f.median / ts_f.median),
            ]
        )
        del t, cases
        gc.collect()
    print(f"## [N, {D}] float32 tensor -> Arrow list array")
    print(
        table(
            [
                "tensor",
                "arrow type",
                "torchspark from_tensor",
                "ns/row",
                "zero-copy",
                "user's pyarrow code",
                "user time",
                "zero-copy",
                "user / ts",
            ],
            rows,
        )
    )
    print("(the user's list<float> time includes building the int32 offsets with np.arange)")
    print(
        f"(list<float> rows run at torch's default {DEFAULT_THREADS} threads unless marked; "
        "the offsets buffer torchspark builds may use torch's intra-op threads)"
    )
    print()


def one_d(sizes: list[int], rounds: int) -> None:
    rows = []
    big = torch.rand(max(sizes), generator=torch.Generator().manual_seed(0))
    ts_cases, user_cases = {}, {}
    for n in sizes:
        t = big[:n]
        zc_ts = check(torchspark.from_tensor(t), t, pa.float32())
        zc_u = check(pa.array(t.numpy()), t, pa.float32())
        c_ts = Case("ts", lambda t=t: torchspark.from_tensor(t))
        c_u = Case("user", lambda t=t: pa.array(t.numpy()))
        run_interleaved([c_ts, c_u], rounds=rounds)
        ts_cases[n], user_cases[n] = c_ts, c_u
        rows.append(
            [
                f"[{n:.0e}]",
                f"{n * 4 / 1e6:g} MB",
                tm(c_ts),
                "yes" if zc_ts else "no",
                tm(c_u),
                "yes" if zc_u else "no",
                ratio(c_u.median / c_ts.median),
            ]
        )
    print("## 1-D float32 tensor -> Arrow float array")
    print(
        table(
            [
                "tensor",
                "bytes",
                "torchspark from_tensor",
                "zero-copy",
                "pa.array(t.numpy())",
                "zero-copy",
                "user / ts",
            ],
            rows,
        )
    )
    lo, hi = min(sizes), max(sizes)
    if hi != lo:
        print(
            f"size scaling (median time at {hi:.0e} / at {lo:.0e}): torchspark "
            f"{ts_cases[hi].median / ts_cases[lo].median:.2f}, pa.array "
            f"{user_cases[hi].median / user_cases[lo].median:.2f} "
            f"(1.0 = constant time; the data grew {hi // lo}x)"
        )
    print()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, default_rounds=15, quick_rounds=5)
    args = finish_args(p.parse_args(argv))
    header("arrow_export_bench: torchspark.from_tensor vs pyarrow constructors", args)
    if args.quick:
        two_d([10**4, 10**5], args.rounds)
        one_d([10**6], args.rounds)
    else:
        two_d([10**4, 10**6], args.rounds)
        one_d([10**6, 10**8], args.rounds)
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
