"""Shared timing and reporting helpers for the torchspark microbenchmarks.

Not a benchmark itself. The scripts in this folder import it (the script's own
folder is on ``sys.path`` when run as ``python benchmarks/<name>.py``).

Timing method: every case of one comparison is timed in the same process,
interleaved round by round (case A, case B, case A, case B, ...), so a burst of
load from another process hits all cases alike. Each round runs a case
``number`` times back to back (``number`` is calibrated once so a round lasts
at least ``min_round_s``) and records the mean per call. The figure reported
is the median over rounds; the minimum is printed next to it. Slow baselines
may be timed only every k-th round (``Case.every``); ``rounds_of`` says how
many rounds a case got.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Case:
    """One timed callable. ``fn`` is called with no arguments."""

    name: str
    fn: Callable[[], object]
    times: list[float] = field(default_factory=list)  # seconds per call, one per round
    number: int = 1
    every: int = 1  # timed in rounds 0, every, 2 * every, ... (for slow baselines)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def _calibrate(fn: Callable[[], object], min_round_s: float) -> int:
    """Calls per round so that one round takes at least ``min_round_s``."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    if one >= min_round_s:
        return 1
    number = 1
    while True:
        number *= 2
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_round_s or number >= 1 << 20:
            return max(1, int(number * min_round_s / max(dt, 1e-12)) + 1)


def run_interleaved(
    cases: Sequence[Case], rounds: int, min_round_s: float = 0.02, warmup: int = 1
) -> list[Case]:
    """Times ``cases`` interleaved over ``rounds`` rounds; fills ``case.times``."""
    for case in cases:
        for _ in range(warmup):
            case.fn()
        case.number = _calibrate(case.fn, min_round_s)
        case.times.clear()
    for r in range(rounds):
        for case in cases:
            if r % case.every:
                continue
            fn, number = case.fn, case.number
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            case.times.append((time.perf_counter() - t0) / number)
    return list(cases)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A compact, aligned, markdown-compatible table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemTotal:"):
                    return f"{int(row.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def thp_mode() -> str:
    """The kernel's transparent huge page mode, e.g. ``always [madvise] never``."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _git_head() -> str:
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                os.path.dirname(os.path.abspath(__file__)),
                "describe",
                "--always",
                "--dirty",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header(title: str, args: argparse.Namespace) -> None:
    """Prints what the figures below depend on: machine, load, versions, mode."""
    import numpy as np
    import pyarrow as pa
    import torch

    import torchspark

    load = os.getloadavg()
    print(f"# {title}")
    print(
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC | "
        f"nproc {os.cpu_count()} | cpu {_cpu_model()} | ram {_ram_gib()} | "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"torch {torch.__version__} (threads {torch.get_num_threads()}) | "
        f"pyarrow {pa.__version__} | numpy {np.__version__} | "
        f"torchspark {getattr(torchspark, '__version__', '?')} | python {platform.python_version()}"
    )
    so = torchspark._C.__file__
    with open(so, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    built = datetime.datetime.fromtimestamp(os.path.getmtime(so), datetime.timezone.utc)
    print(f"torchspark._C sha256 {digest} built {built:%Y-%m-%d %H:%M} UTC | git {_git_head()}")
    print(
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '(unset)')} | "
        f"transparent_hugepage {thp_mode()}"
    )
    print(
        f"mode {'quick' if args.quick else 'full'} | rounds {args.rounds} | "
        "figures: median per call over rounds (min in brackets)"
    )
    print()


def footer() -> None:
    load = os.getloadavg()
    print(f"\nload at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def parser(doc: str | None, default_rounds: int, quick_rounds: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, few rounds (seconds)")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"timed rounds per case (default {default_rounds}, {quick_rounds} with --quick)",
    )
    p.set_defaults(_default_rounds=default_rounds, _quick_rounds=quick_rounds)
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.rounds is None:
        args.rounds = args._quick_rounds if args.quick else args._default_rounds
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    return args


def ratio(x: float) -> str:
    """A ratio with three significant digits, e.g. ``0.000803x``, ``12.3x``."""
    return f"{x:.3g}x"


def tm(case: Case) -> str:
    """``median (min)`` of a timed case, with the round count if it was not timed every round."""
    note = f" [{len(case.times)} rounds]" if case.every > 1 else ""
    return f"{fmt_time(case.median)} ({fmt_time(case.min)}){note}"


def spark_run_arguments(p: argparse.ArgumentParser, mrpb: int | None = 10_000) -> None:
    """The options every end-to-end Spark benchmark takes: torch threads per
    Python worker, the data's partitions, the Arrow batch size (default
    ``mrpb``; None: the script sets ``args.mrpb`` itself), the driver's
    memory, and waiting for a quiet machine."""
    p.add_argument("--torch-threads", type=int, default=1, dest="threads", help="per Python worker")
    p.add_argument("--partitions", type=int, default=4, help="partitions (Ray: blocks) of the data")
    if mrpb is not None:
        p.add_argument(
            "--max-records-per-batch",
            type=int,
            default=mrpb,
            dest="mrpb",
            help="spark.sql.execution.arrow.maxRecordsPerBatch (default %(default)s)",
        )
    p.add_argument("--driver-memory", default="6g")
    p.add_argument(
        "--wait-load",
        type=float,
        default=0.0,
        help="before starting, wait (up to 15 min) until the 1-minute load is below this",
    )
