"""What one model copy costs, measured: :func:`profile_model` -> :class:`ModelProfile`.

A Spark task that scores with torchspark is a Python worker holding one model
copy in a :class:`torchspark.Engine`. This module measures such a worker in a
fresh Python process (so that the driver's own memory and thread settings
neither add to the figures nor change): the resident memory of the worker
with torchspark imported, what loading the model adds, the batch latency of
the real engine at several batch sizes (median of timed calls after one
warm-up call) with the memory each batch size adds at its peak, and the
latency of the knee batch (see :attr:`ModelProfile.knee`) on one intra-op
thread and on ``scaling_threads``, to see how the model scales with threads.

Probe inputs are described per row, ``"name:dtype[d1,d2,...]"`` (see
:func:`parse_input`), or given as example tensors (a batch dimension first;
their rows are repeated to make each batch). Values are seeded normal floats;
integers are 0 (a valid token id) and 1 for arguments whose name ends in
``mask``.

>>> import os, tempfile, torch, torchspark
>>> from torchspark.model_profile import profile_model
>>> path = torchspark.export(torch.nn.Linear(16, 4), torch.randn(2, 16),
...                          os.path.join(tempfile.mkdtemp(), "linear.pt"))
>>> measured = profile_model(path, ["x:float32[16]"], batch_sizes=[8, 64])
>>> [t.rows for t in measured.timings], measured.weights_bytes
([8, 64], 272)
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "BatchTiming",
    "ModelProfile",
    "ProbeInput",
    "knee_of",
    "parse_input",
    "probe_specs",
    "profile_model",
]

# A batch size whose rows/s is within this fraction of the best measured one
# is "at the knee": larger batches buy (almost) nothing but memory.
KNEE_FRACTION = 0.9

_SPEC = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.]*)\s*(?::\s*(?P<dtype>\w+))?\s*(?:\[(?P<shape>[\d,\s]*)\])?\s*$"
)
_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class ProbeInput:
    """One model input as rows of ``shape`` (without the batch dimension) of ``dtype``."""

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = ()

    def rows(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` rows of made-up values (see the module's docstring)."""
        dtype = _DTYPES[self.dtype]
        size = (count, *self.shape)
        if dtype.is_floating_point:
            generator = torch.Generator().manual_seed(seed)
            return torch.randn(size, generator=generator).to(dtype)
        if dtype == torch.bool or self.name.lower().endswith("mask"):
            return torch.ones(size, dtype=dtype)
        return torch.zeros(size, dtype=dtype)

    def __str__(self) -> str:
        return f"{self.name}:{self.dtype}[{','.join(map(str, self.shape))}]"


def parse_input(spec: str) -> ProbeInput:
    """``"x:float32[16]"`` -> ProbeInput("x", "float32", (16,)); the dtype
    defaults to float32 and the shape to a scalar per row (``"age"``).

    >>> parse_input("ids:int64[128]")
    ProbeInput(name='ids', dtype='int64', shape=(128,))
    """
    found = _SPEC.match(spec)
    if found is None:
        raise ValueError(
            f"input '{spec}': expected name:dtype[d1,d2,...] (the shape of one row), "
            "e.g. 'x:float32[16]' or 'ids:int64[128]'"
        )
    dtype = (found["dtype"] or "float32").lower()
    if dtype not in _DTYPES:
        raise ValueError(f"input '{spec}': dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    text = found["shape"] or ""
    dims = tuple(int(d) for d in text.replace(" ", "").split(",") if d)
    if any(d < 1 for d in dims):
        raise ValueError(f"input '{spec}': every dimension must be >= 1, got {list(dims)}")
    return ProbeInput(found["name"], dtype, dims)


@dataclass(frozen=True)
class BatchTiming:
    """The engine's latency for one batch size, and the memory it added."""

    rows: int
    seconds: float  # median over the timed calls
    calls: int  # timed calls (after one warm-up call)
    peak_bytes: (
        int  # peak resident memory during these calls (inputs included) over the loaded model
    )

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class ModelProfile:
    """What one Python worker with one copy of a model measured (see the module)."""

    path: str
    format: str  # TorchScript, AOTInductor or ONNX
    device: str
    file_bytes: int
    weights_bytes: int | None  # parameters + buffers (TorchScript); None for other formats
    worker_bytes: int  # resident memory of a Python worker with torchspark imported
    load_bytes: int  # what loading the model added to it
    load_seconds: float
    address_space_bytes: int  # the worker's virtual size after loading and running
    threads: int  # intra-op threads the timings ran with
    timings: list[BatchTiming] = field(default_factory=list)
    scaling_threads: int = 1  # the knee batch also ran on 1 and on this many threads
    one_thread_seconds: float | None = None  # the knee batch on 1 thread (scaling_threads > 1)
    scaling_seconds: float | None = None  # the knee batch on scaling_threads

    @property
    def model_bytes(self) -> int:
        """The model's size: its parameters and buffers, else its file."""
        return self.weights_bytes if self.weights_bytes is not None else self.file_bytes

    @property
    def copy_bytes(self) -> int:
        """Memory one loaded copy holds: what loading added, at least the model's size
        (an allocator reusing freed pages can make the measured growth smaller)."""
        return max(self.load_bytes, self.model_bytes)

    @property
    def knee(self) -> BatchTiming:
        """The smallest measured batch size within KNEE_FRACTION of the best rows/s."""
        return knee_of(self.timings)

    @property
    def thread_speedup(self) -> float | None:
        """Latency of the knee batch on 1 thread over that on ``scaling_threads``."""
        if self.one_thread_seconds is None or self.scaling_seconds is None:
            return None
        return self.one_thread_seconds / self.scaling_seconds

    def timing(self, rows: int) -> BatchTiming | None:
        return next((t for t in self.timings if t.rows == rows), None)

    def peak_bytes(self, rows: int) -> int:
        """Working memory of a batch of ``rows``: measured, else scaled from the
        nearest larger measured batch (never below that of a smaller one)."""
        measured = self.timing(rows)
        if measured is not None:
            return measured.peak_bytes
        larger = [t for t in self.timings if t.rows > rows]
        smaller = [t for t in self.timings if t.rows < rows]
        if larger:
            return min(larger, key=lambda t: t.rows).peak_bytes
        top = max(smaller, key=lambda t: t.rows)
        return math.ceil(top.peak_bytes * rows / top.rows)


def knee_of(timings: Sequence[BatchTiming]) -> BatchTiming:
    """The smallest batch size within KNEE_FRACTION of the best rows/s of ``timings``."""
    best = max(t.rows_per_s for t in timings)
    return min((t for t in timings if t.rows_per_s >= KNEE_FRACTION * best), key=lambda t: t.rows)


def profile_model(
    model: str | os.PathLike[str],
    inputs: Sequence[str | ProbeInput] | Mapping[str, Any] | Any,
    *,
    batch_sizes: Sequence[int] = (16, 64, 256, 1024, 4096),
    device: str = "cpu",
    threads: int = 1,
    scaling_threads: int = 1,
    min_seconds: float = 0.1,
    max_calls: int = 20,
    max_batch_seconds: float = 2.0,
    timeout: float = 300.0,
) -> ModelProfile:
    """Measure ``model`` (a file) in a fresh Python process; see the module.

    Args:
        inputs: probe inputs, one per model argument in order: specs
            (``"x:float32[16]"`` or :class:`ProbeInput`), or example tensors
            (a tensor, a tuple/list of them, or a dict by argument name).
        batch_sizes: the batch sizes to time, ascending; a batch size whose
            warm-up call took over ``max_batch_seconds`` ends the series.
        threads: intra-op threads (what ``spark.task.cpus`` gives a task).
        scaling_threads: when > 1, the knee batch also runs on 1 thread and on
            this many (:attr:`ModelProfile.thread_speedup`).
        min_seconds, max_calls: each batch size is called until
            ``min_seconds`` have passed (at least 3 calls, at most ``max_calls``).
    """
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model '{path}': no such file")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes: expected sizes >= 1, got {list(batch_sizes)}")
    if threads < 1 or scaling_threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads} and {scaling_threads}")
    with tempfile.TemporaryDirectory(prefix="torchspark-profile-") as tmp:
        request = {
            "path": path,
            "device": device,
            "threads": threads,
            "scaling_threads": scaling_threads,
            "batch_sizes": sizes,
            "min_seconds": min_seconds,
            "max_calls": max_calls,
            "max_batch_seconds": max_batch_seconds,
            "inputs": _inputs_for_child(inputs, tmp),
        }
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        child = subprocess.run(
            [sys.executable, "-c", "from torchspark.model_profile import _child; _child()"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    if child.returncode != 0:
        lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(
            f"model '{path}': measuring it in a fresh Python process failed (exit "
            f"{child.returncode}): {lines[-1] if lines else 'no message'}"
        )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["timings"] = [BatchTiming(**t) for t in result["timings"]]
    return ModelProfile(**result)


def probe_specs(inputs: Any) -> list[ProbeInput] | None:
    """``inputs`` as ProbeInputs when given as specs; None for example tensors."""
    if isinstance(inputs, (str, ProbeInput)):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, torch.Tensor):
        return None
    if not all(isinstance(i, (str, ProbeInput)) for i in inputs):
        return None
    if not inputs:
        raise ValueError("inputs: expected at least one probe input")
    return [i if isinstance(i, ProbeInput) else parse_input(i) for i in inputs]


def _inputs_for_child(inputs: Any, tmp: str) -> dict[str, Any]:
    """Specs as strings, or example tensors saved to a file in ``tmp``."""
    specs = probe_specs(inputs)
    if specs is not None:
        return {"specs": [asdict(s) for s in specs]}
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        names, tensors = [str(k) for k in inputs], list(inputs.values())
    elif isinstance(inputs, (tuple, list)):
        names, tensors = None, list(inputs)
    else:
        raise TypeError(
            "inputs: expected specs like 'x:float32[16]' or example tensors (a tensor, a "
            f"tuple/list or a dict of them), got {type(inputs).__name__}"
        )
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise TypeError("inputs: example tensors need a batch dimension (at least one row)")
    if len({t.shape[0] for t in tensors}) != 1:
        raise ValueError(
            f"inputs: example tensors must have the same rows, got {[t.shape[0] for t in tensors]}"
        )
    file = os.path.join(tmp, "examples.pt")
    torch.save([t.detach().cpu().contiguous() for t in tensors], file)
    return {"examples": file, "names": names}


# ---------------------------------------------------------------------------
# The fresh process


def _status() -> dict[str, int]:
    """VmRSS, VmHWM and VmSize of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS


def _weights_bytes(path: str, format: str) -> int | None:
    """Bytes of the parameters and buffers (each tensor once)."""
    if format != "TorchScript":
        return None
    module = torch.jit.load(path, map_location="cpu")
    seen: dict[tuple[int, int], int] = {}
    for _, t in [*module.named_parameters(), *module.named_buffers()]:
        seen[(t.data_ptr(), t.nbytes)] = t.nbytes
    return sum(seen.values())


def _batch_maker(request: dict[str, Any]) -> tuple[Any, list[str] | None]:
    """A function rows -> the model's inputs for that many rows, and their names."""
    if "specs" in request:
        specs = [ProbeInput(s["name"], s["dtype"], tuple(s["shape"])) for s in request["specs"]]
        return (lambda rows: [s.rows(rows, seed=i) for i, s in enumerate(specs)]), [
            s.name for s in specs
        ]
    examples = torch.load(request["examples"])
    count = examples[0].shape[0]

    def make(rows: int) -> list[torch.Tensor]:
        index = torch.arange(rows) % count
        return [t[index] for t in examples]

    return make, request["names"]


def _timed(engine: Any, batch: Any, min_seconds: float, max_calls: int) -> tuple[float, int]:
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (
        time.perf_counter() - started < min_seconds and len(times) < max_calls
    ):
        begin = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - begin)
    return statistics.median(times), len(times)


def _child() -> None:
    request = json.loads(sys.stdin.read())
    from torchspark import _C
    from torchspark.engine import Engine

    try:  # what a Spark Python worker running torchspark has imported
        import pyspark.worker  # noqa: F401

        import torchspark.spark.worker  # noqa: F401
    except ImportError:
        pass

    torch.set_num_threads(request["threads"])
    path, device = request["path"], torch.device(request["device"])
    format = _C.detect_format(path)
    make, names = _batch_maker(request["inputs"])
    before = _status()["VmRSS"]
    began = time.perf_counter()
    loaded = _C.load_model(path, device, 1)
    load_seconds = time.perf_counter() - began
    loaded_rss = _status()["VmRSS"]
    load_bytes = max(0, loaded_rss - before)
    model_names = list(loaded.input_names)
    by_name = names is not None and sorted(names) == sorted(model_names)

    def arguments(rows: int) -> Any:
        tensors = make(rows)
        return dict(zip(names, tensors, strict=True)) if by_name else tensors

    timings: list[BatchTiming] = []
    largest = request["batch_sizes"][-1]
    with Engine(
        path,
        device=device,
        batch_size=largest,
        max_delay_ms=0.0,
        intra_op_threads=request["threads"],
        _model=loaded,
    ) as engine:
        for rows in request["batch_sizes"]:
            batch = arguments(rows)  # its memory counts: a task holds its Arrow batch too
            _reset_peak()
            begin = time.perf_counter()
            engine.run(batch)  # warm-up: first-call compilation and allocations
            warm_up = time.perf_counter() - begin
            seconds, calls = _timed(engine, batch, request["min_seconds"], request["max_calls"])
            # Over the loaded model: memory that smaller batches left to the allocator
            # is reused here, so it is counted once, in the largest batch that needs it.
            peak = max(0, _status()["VmHWM"] - loaded_rss)
            timings.append(BatchTiming(rows, seconds, calls, peak))
            del batch
            if warm_up > request["max_batch_seconds"]:
                break
        knee = knee_of(timings)
        batch = arguments(knee.rows)

        def on(threads: int) -> float:
            if threads == request["threads"]:
                return knee.seconds
            torch.set_num_threads(threads)
            return _timed(engine, batch, request["min_seconds"], request["max_calls"])[0]

        scaling = request["scaling_threads"]
        one, many = (on(1), on(scaling)) if scaling > 1 else (None, None)
    weights = _weights_bytes(path, format)  # after the measurements: its load is not theirs
    result = {
        "path": path,
        "format": format,
        "device": str(device),
        "file_bytes": os.path.getsize(path),
        "weights_bytes": weights,
        "worker_bytes": before,
        "load_bytes": load_bytes,
        "load_seconds": load_seconds,
        "address_space_bytes": _status()["VmSize"],
        "threads": request["threads"],
        "timings": [asdict(t) for t in timings],
        "scaling_threads": scaling,
        "one_thread_seconds": one,
        "scaling_seconds": many,
    }
    print(json.dumps(result))
