"""Scalar columns -> row-major [N, F]: ``torchspark.gather`` against memcpy and torch.stack.

Workload: a pyarrow RecordBatch of F = 64 float32 columns x N = 1e6 rows (no
nulls; each column its own numpy buffer, random values, fixed seed), gathered
into a preallocated ``[N, 64]`` float32 tensor (``out=``): 256 MB out. All
figures are GB/s of OUTPUT bytes (N * F * itemsize / time).

Cases, all timed interleaved in the same process:

* ``memcpy 1T``: ``ctypes.memmove`` of the same number of bytes between two
  preallocated, already-touched numpy buffers (one thread): the bandwidth
  ceiling of a single core on this machine.
* ``torchspark.gather``: ``torchspark.gather(batch, out=out)``, once with
  ``torch.set_num_threads(1)`` and once with torch's default thread count.
* the user's approach today:
  ``torch.stack([torch.from_numpy(c.to_numpy()) for c in batch.columns], dim=1, out=out)``,
  and two other things a user might write: filling ``out[:, j].copy_(col_j)``
  column by column, and pyarrow's own
  ``torch.from_numpy(batch.to_tensor(row_major=True).to_numpy())`` (allocates
  its output; no ``out=``).
* fused cast: 64 float64 columns -> float32 ``[N, 64]`` out (512 MB in,
  256 MB out): ``torchspark.gather(batch64, out=out)`` against
  ``out.copy_(torch.stack(cols64, dim=1))`` (stack, then cast into ``out``).
* F sweep: F = 8, 16, 64, 256 with N * F fixed (64e6 elements, 256 MB out):
  gather (1 thread and default), memcpy and torch.stack, to show how the
  kernel scales with the column count.

Targets (from the design): gather >= 0.5 x single-thread memcpy and
>= 5 x torch.stack. The verdict is printed against the figures of this run.

Note: the tile size of the kernel is a C++ constant (``kGatherTileRows`` in
csrc/torchspark/gather.h) and cannot be swept from Python.

Run: ``python benchmarks/gather_bench.py`` (``--quick`` for a smoke run;
``--no-sweep`` skips the F sweep).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import warnings

import numpy as np
import pyarrow as pa
import torch
from _bench import Case, finish_args, footer, header, parser, run_interleaved, table, tm

import torchspark

DEFAULT_THREADS = torch.get_num_threads()
SLOW_EVERY = 3  # slow baselines are timed every 3rd round only (the table says how many)
# The baselines wrap read-only Arrow memory, as a user's code would; torch warns once.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def make_batch(n: int, f: int, dtype: type, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    cols = {f"c{j}": pa.array(rng.random(n).astype(dtype)) for j in range(f)}
    return pa.record_batch(cols)


def memcpy_case(nbytes: int) -> Case:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    ctypes.memmove(dst.ctypes.data, src.ctypes.data, nbytes)
    assert (dst[:: 1 << 20] == 1).all()
    s, d = src.ctypes.data, dst.ctypes.data

    def fn(src=src, dst=dst) -> None:  # keeps the buffers alive
        ctypes.memmove(d, s, nbytes)

    return Case("memcpy 1T", fn)


def with_threads(threads: int, fn):
    def run() -> object:
        torch.set_num_threads(threads)
        return fn()

    return run


def gbps(nbytes: int, case: Case) -> str:
    return f"{nbytes / case.median / 1e9:.2f} ({nbytes / case.min / 1e9:.2f})"


def user_stack(batch: pa.RecordBatch, out: torch.Tensor) -> torch.Tensor:
    cols = [torch.from_numpy(c.to_numpy()) for c in batch.columns]
    return torch.stack(cols, dim=1, out=out)


def user_copy_columns(batch: pa.RecordBatch, out: torch.Tensor) -> torch.Tensor:
    for j, c in enumerate(batch.columns):
        out[:, j].copy_(torch.from_numpy(c.to_numpy()))
    return out


def user_pyarrow_tensor(batch: pa.RecordBatch) -> torch.Tensor:
    return torch.from_numpy(batch.to_tensor(row_major=True).to_numpy())


def main_comparison(n: int, f: int, rounds: int) -> None:
    batch = make_batch(n, f, np.float32, seed=0)
    out = torch.empty(n, f, dtype=torch.float32)
    ref = torch.empty(n, f, dtype=torch.float32)
    nbytes = out.numel() * out.element_size()

    # Correctness first.
    user_stack(batch, ref)
    torchspark.gather(batch, out=out)
    assert torch.equal(out, ref), "gather differs from torch.stack"
    assert torch.equal(user_pyarrow_tensor(batch), ref)
    out.zero_()
    assert torch.equal(user_copy_columns(batch, out), ref)
    del ref

    cases = [
        memcpy_case(nbytes),
        Case("gather 1T", with_threads(1, lambda: torchspark.gather(batch, out=out))),
        Case(
            f"gather {DEFAULT_THREADS}T",
            with_threads(DEFAULT_THREADS, lambda: torchspark.gather(batch, out=out)),
        ),
        Case("stack 1T", with_threads(1, lambda: user_stack(batch, out))),
        Case(
            f"stack {DEFAULT_THREADS}T",
            with_threads(DEFAULT_THREADS, lambda: user_stack(batch, out)),
            every=SLOW_EVERY,
        ),
        Case(
            "copy cols 1T",
            with_threads(1, lambda: user_copy_columns(batch, out)),
            every=SLOW_EVERY,
        ),
        Case(
            "pa to_tensor",
            with_threads(DEFAULT_THREADS, lambda: user_pyarrow_tensor(batch)),
            every=SLOW_EVERY,
        ),
    ]
    run_interleaved(cases, rounds=rounds, min_round_s=0.05)
    torch.set_num_threads(DEFAULT_THREADS)
    by = {c.name: c for c in cases}
    mem = by["memcpy 1T"]
    stack_1t = by["stack 1T"]
    stack_dt = by[f"stack {DEFAULT_THREADS}T"]
    labels = {
        "memcpy 1T": "memcpy, 1 thread (ctypes.memmove, same bytes)",
        "gather 1T": "torchspark.gather(out=), 1 thread",
        f"gather {DEFAULT_THREADS}T": f"torchspark.gather(out=), {DEFAULT_THREADS} threads",
        "stack 1T": "torch.stack(cols, 1, out=), 1 thread",
        f"stack {DEFAULT_THREADS}T": f"torch.stack(cols, 1, out=), {DEFAULT_THREADS} threads",
        "copy cols 1T": "out[:, j].copy_(col_j) per column, 1 thread",
        "pa to_tensor": "from_numpy(batch.to_tensor(row_major=True)) (allocates)",
    }
    rows = []
    for c in cases:
        same_t_stack = stack_1t if c.name.endswith("1T") else stack_dt
        rows.append(
            [
                labels[c.name],
                tm(c),
                gbps(nbytes, c),
                f"{mem.median / c.median:.2f}",
                f"{same_t_stack.median / c.median:.2f}x",
            ]
        )
    print(
        f"## gather {f} float32 columns x {n:.0e} rows -> [N, {f}] float32 "
        f"({nbytes / 1e6:.0f} MB out)"
    )
    print(
        table(
            [
                "method",
                "time",
                "GB/s out",
                "vs memcpy 1T",
                "speed-up vs stack (same threads)",
            ],
            rows,
        )
    )
    g1 = by["gather 1T"]
    gd = by[f"gather {DEFAULT_THREADS}T"]
    r_mem_1 = mem.median / g1.median
    r_mem_d = mem.median / gd.median
    r_st_1 = stack_1t.median / g1.median
    r_st_d = stack_dt.median / gd.median
    print(
        f"target gather >= 0.5 x memcpy 1T: 1 thread {r_mem_1:.2f} "
        f"{'MET' if r_mem_1 >= 0.5 else 'MISSED'}; {DEFAULT_THREADS} threads {r_mem_d:.2f} "
        f"{'MET' if r_mem_d >= 0.5 else 'MISSED'}"
    )
    print(
        f"target gather >= 5x torch.stack (same threads): 1 thread {r_st_1:.2f}x "
        f"{'MET' if r_st_1 >= 5 else 'MISSED'}; {DEFAULT_THREADS} threads {r_st_d:.2f}x "
        f"{'MET' if r_st_d >= 5 else 'MISSED'}"
    )
    print()


def cast_comparison(n: int, f: int, rounds: int) -> None:
    batch = make_batch(n, f, np.float64, seed=1)
    out = torch.empty(n, f, dtype=torch.float32)
    nbytes = out.numel() * out.element_size()

    def user(batch=batch, out=out) -> torch.Tensor:
        cols = [torch.from_numpy(c.to_numpy()) for c in batch.columns]
        return out.copy_(torch.stack(cols, dim=1))

    ref = user().clone()
    torchspark.gather(batch, out=out)
    assert torch.equal(out, ref), "fused-cast gather differs from stack + cast"
    del ref
    cases = [
        memcpy_case(nbytes),
        Case("gather 1T", with_threads(1, lambda: torchspark.gather(batch, out=out))),
        Case(
            f"gather {DEFAULT_THREADS}T",
            with_threads(DEFAULT_THREADS, lambda: torchspark.gather(batch, out=out)),
        ),
        Case("stack+copy_ 1T", with_threads(1, user), every=SLOW_EVERY),
        Case(
            f"stack+copy_ {DEFAULT_THREADS}T", with_threads(DEFAULT_THREADS, user), every=SLOW_EVERY
        ),
    ]
    run_interleaved(cases, rounds=rounds, min_round_s=0.05)
    torch.set_num_threads(DEFAULT_THREADS)
    mem = cases[0]
    rows = []
    for c in cases:
        base = cases[3] if c.name.endswith("1T") else cases[4]
        rows.append(
            [
                c.name,
                tm(c),
                gbps(nbytes, c),
                f"{mem.median / c.median:.2f}",
                f"{base.median / c.median:.2f}x",
            ]
        )
    print(
        f"## fused cast: {f} float64 columns x {n:.0e} rows -> [N, {f}] float32 "
        f"({nbytes * 2 / 1e6:.0f} MB in, {nbytes / 1e6:.0f} MB out)"
    )
    print(
        table(
            ["method", "time", "GB/s out", "vs memcpy 1T (out bytes)", "vs stack+copy_"],
            rows,
        )
    )
    print("stack+copy_ = out.copy_(torch.stack(float64 cols, dim=1)) (stack, then cast into out)")
    print()


def f_sweep(total: int, widths: list[int], rounds: int) -> None:
    rows = []
    nbytes = total * 4
    mem = memcpy_case(nbytes)
    for f in widths:
        n = total // f
        batch = make_batch(n, f, np.float32, seed=2)
        out = torch.empty(n, f, dtype=torch.float32)
        ref = torch.empty(n, f, dtype=torch.float32)
        user_stack(batch, ref)
        torchspark.gather(batch, out=out)
        assert torch.equal(out, ref)
        del ref
        g1 = Case("g1", with_threads(1, lambda b=batch, o=out: torchspark.gather(b, out=o)))
        gd = Case(
            "gd",
            with_threads(DEFAULT_THREADS, lambda b=batch, o=out: torchspark.gather(b, out=o)),
        )
        st = Case("st", with_threads(1, lambda b=batch, o=out: user_stack(b, o)), every=2)
        mem.times.clear()
        run_interleaved([mem, g1, gd, st], rounds=rounds, min_round_s=0.05)
        rows.append(
            [
                f"{f}",
                f"{n:,}",
                gbps(nbytes, mem),
                gbps(nbytes, g1),
                gbps(nbytes, gd),
                gbps(nbytes, st),
                f"{mem.median / g1.median:.2f}",
                f"{st.median / g1.median:.2f}x",
                f"{g1.median / (n * f) * 1e9:.3f}",
            ]
        )
        del batch, out
        gc.collect()
    torch.set_num_threads(DEFAULT_THREADS)
    print(f"## F sweep: N x F = {total:.0e} float32 elements ({nbytes / 1e6:.0f} MB out), GB/s out")
    print(
        table(
            [
                "F",
                "N",
                "memcpy 1T",
                "gather 1T",
                f"gather {DEFAULT_THREADS}T",
                "stack 1T",
                "gather 1T / memcpy",
                "gather 1T vs stack 1T",
                "gather 1T ns/elem",
            ],
            rows,
        )
    )
    print()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, default_rounds=9, quick_rounds=3)
    p.add_argument("--no-sweep", action="store_true", help="skip the F = 8/16/64/256 sweep")
    args = finish_args(p.parse_args(argv))
    header("gather_bench: torchspark.gather vs memcpy and torch.stack", args)
    n = 50_000 if args.quick else 1_000_000
    main_comparison(n, 64, args.rounds)
    gc.collect()
    cast_comparison(n, 64, args.rounds)
    gc.collect()
    if not args.no_sweep:
        f_sweep(n * 64, [8, 16, 64, 256], max(3, args.rounds // 2))
    if args.quick:
        print("(--quick: 50k rows = 13 MB out, cache-resident; not the reference size)")
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
