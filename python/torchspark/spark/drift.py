"""Output and input drift: per-column statistics (:class:`ColumnStats`) and their comparison.

Each task computes, per Arrow batch and per column, the count, mean, standard
deviation, minimum, maximum and a :class:`.sketch.LogSketch` of the finite
values, with NaN, infinities and nulls counted apart (kept out of the moments
and the sketch). Everything is whole-array numpy work on the batch's Arrow
buffers (no loop per row); tasks send their statistics to the driver in their
records, where :func:`merge` combines them (moments by Chan et al.'s parallel
formula, sketches by adding bucket counts).

Columns: numbers give one set of statistics; an ``array<...>`` column (logits,
embeddings) gives one over all its values, under its name, and, when every row
has the same length of at most :data:`PER_ELEMENT_WIDTH`, one per element
too, named ``name[i]`` (a classifier's logits drift per class). Wider arrays
only have the pooled statistics, so a task's record stays small.

:func:`compare` scores the drift of each column against a reference:

- ``psi``, the population stability index over the bins cut at the
  reference's deciles (from its sketch): ``sum((p - q) * ln(p / q))`` over
  bins, ``p`` the share of current values in a bin and ``q`` the reference's
  (an empty bin counts as :data:`PSI_FLOOR`, as is usual, so one empty bin
  does not make it infinite). Thresholds commonly used (Siddiqi, "Credit Risk
  Scorecards", 2006; Yurdakul, 2018): below 0.1 no significant change, 0.1 to
  0.25 a moderate shift worth a look, above 0.25 a significant shift (0.2 is
  also used as the alarm level). Identical distributions give 0; a
  mean shifted by one standard deviation of a normal gives about 1.
- ``mean_shift``: the difference of the means in reference standard
  deviations; ``std_ratio``: current over reference standard deviation.
- ``nonfinite`` / ``reference_nonfinite``: the share of NaN and infinite values.

>>> import pyarrow as pa
>>> from torchspark.spark.drift import column_stats
>>> stats = column_stats(pa.array([1.0, 2.0, float("nan"), 4.0]))
>>> stats.count, stats.nan, stats.mean, stats.max
(3, 1, 2.3333333333333335, 4.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sketch import LogSketch

PER_ELEMENT_WIDTH = 8  # arrays this narrow also get statistics per element
PSI_BINS = 10  # bins cut at the reference's deciles
PSI_FLOOR = 1e-4  # share given to an empty bin in the PSI
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25


@dataclass
class ColumnStats:
    """Statistics of one column's values: finite ones in ``count``, the moments,
    the extremes and ``sketch``; ``nan``, ``inf`` (either sign) and ``nulls``
    apart. ``std`` is the population standard deviation (numpy's default)."""

    count: int = 0
    nan: int = 0
    inf: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    min: float = math.inf
    max: float = -math.inf
    sketch: LogSketch = field(default_factory=LogSketch, repr=False)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    @property
    def values(self) -> int:
        """Every value seen: finite, NaN and infinite (not nulls)."""
        return self.count + self.nan + self.inf

    def quantile(self, q: float) -> float:
        """From the sketch: within its relative accuracy (1%)."""
        return self.sketch.quantile(q)

    def add(self, values: np.ndarray, nulls: int = 0) -> ColumnStats:
        """Adds a batch of values (numpy, whole-array operations); returns self."""
        values = np.asarray(values).ravel()
        if values.dtype.kind not in "fc":
            finite = values.astype(np.float64)
            nan = inf = 0
        else:
            values = values.astype(np.float64, copy=False)
            ok = np.isfinite(values)
            finite = values if ok.all() else values[ok]
            nan = 0 if finite is values else int(np.count_nonzero(np.isnan(values)))
            inf = int(values.size - finite.size - nan)
        batch = ColumnStats(nan=nan, inf=inf, nulls=nulls)
        if finite.size:
            batch.count = int(finite.size)
            batch.mean = float(finite.mean())
            batch.m2 = float(np.square(finite - batch.mean).sum())
            batch.min = float(finite.min())
            batch.max = float(finite.max())
            batch.sketch = LogSketch.of(
                finite, self.sketch.relative_accuracy, self.sketch.max_buckets
            )
        return self.merge(batch)

    def merge(self, other: ColumnStats) -> ColumnStats:
        """Adds ``other`` (Chan et al.'s pairwise update of the moments); returns self."""
        total = self.count + other.count
        if other.count:
            delta = other.mean - self.mean
            self.mean += delta * other.count / total
            self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.nan += other.nan
        self.inf += other.inf
        self.nulls += other.nulls
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sketch.merge(other.sketch)
        return self


def column_stats(array: Any, into: dict[str, ColumnStats] | None = None, name: str = "") -> Any:
    """The statistics of an Arrow array (or chunked array) of numbers or
    (nested) lists of numbers, added to ``into[name]`` (and ``into[name[i]]``
    per element for narrow arrays; see the module docstring) when ``into`` is
    given, else returned. Other types are left out (``into`` unchanged; None)."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        for chunk in array.chunks:
            column_stats(chunk, into, name)
        return into
    own = into is None
    into = {} if own else into
    values, nulls, width = _numbers(array)
    if values is None:
        return None if own else into
    into.setdefault(name, ColumnStats()).add(values, nulls)
    if width is not None:
        per_element = values.reshape(-1, width)
        for i in range(width):
            into.setdefault(f"{name}[{i}]", ColumnStats()).add(per_element[:, i])
    return into[name] if own else into


def _numbers(array: Any) -> tuple[np.ndarray | None, int, int | None]:
    """(the non-null numbers of ``array`` flattened, nulls at every level, the
    common width of narrow one-level lists or None)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = 0
    width = None
    levels = 0
    while (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or (pa.types.is_fixed_size_list(array.type))
    ):
        nulls += array.null_count
        if levels == 0 and len(array) and array.null_count == 0:
            lengths = pc.list_value_length(array)
            bounds = pc.min_max(lengths)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low == high and 0 < high <= PER_ELEMENT_WIDTH:
                width = high
        array = array.flatten()
        levels += 1
    if levels != 1:
        width = None
    kind = array.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        return None, 0, None
    if array.null_count:
        nulls += array.null_count
        array = pc.drop_null(array)
        width = None  # rows no longer line up with elements
    return array.to_numpy(zero_copy_only=False), nulls, width


@dataclass
class Drift:
    """How one column moved from the reference (see the module docstring)."""

    psi: float
    mean_shift: float
    std_ratio: float
    count: int
    reference_count: int
    nonfinite: float
    reference_nonfinite: float

    @property
    def level(self) -> str:
        """``"none"`` (PSI < 0.1), ``"moderate"`` (< 0.25) or ``"significant"``."""
        if math.isnan(self.psi):
            return "unknown"
        if self.psi < PSI_MODERATE:
            return "none"
        return "moderate" if self.psi < PSI_SIGNIFICANT else "significant"


@dataclass
class Comparison:
    """:meth:`.report.Report.compare`'s answer: a :class:`Drift` per output
    column (and per input column, where both jobs recorded input statistics),
    and the columns only one side has."""

    outputs: dict[str, Drift]
    inputs: dict[str, Drift]
    missing: list[str]  # columns in one report only ("output x", "input y")

    def drifted(self, threshold: float = PSI_SIGNIFICANT) -> list[str]:
        """Columns whose PSI exceeds ``threshold`` (outputs, then inputs as ``input:<name>``)."""
        return [n for n, d in self.outputs.items() if d.psi > threshold] + [
            f"input:{n}" for n, d in self.inputs.items() if d.psi > threshold
        ]

    def __str__(self) -> str:
        lines = []
        for side, drifts in (("output", self.outputs), ("input", self.inputs)):
            for name, d in drifts.items():
                lines.append(
                    f"{side} {name}: PSI {d.psi:.3f} ({d.level}), mean shift "
                    f"{d.mean_shift:+.2f} std, std ratio {d.std_ratio:.2f}"
                )
        lines += [f"{m}: in one report only" for m in self.missing]
        return "\n".join(lines) if lines else "no columns with statistics in both reports"


def merge(parts: list[Mapping[str, ColumnStats]]) -> dict[str, ColumnStats]:
    """Per column, the statistics of all ``parts`` (tasks) together (new objects)."""
    merged: dict[str, ColumnStats] = {}
    for part in parts:
        for name, stats in part.items():
            merged.setdefault(name, ColumnStats()).merge(stats)
    return merged


def psi(current: LogSketch, reference: LogSketch, bins: int = PSI_BINS) -> float:
    """The population stability index of ``current`` against ``reference``
    over bins cut at the reference's quantiles ``1/bins, 2/bins, ...`` (fewer
    bins where quantiles coincide: a discrete output); NaN if either is empty."""
    if current.count == 0 or reference.count == 0:
        return math.nan
    edges = np.unique([reference.quantile(k / bins) for k in range(1, bins)])
    shares = []
    for sketch in (current, reference):
        values, counts = sketch.buckets()
        # Bucket values are the same grid for both sketches (same accuracy): a
        # bucket at an edge belongs to the bin below it.
        below = np.searchsorted(edges, values, side="left")
        per_bin = np.bincount(below, weights=counts, minlength=edges.size + 1)
        shares.append(np.maximum(per_bin / counts.sum(), PSI_FLOOR))
    p, q = shares
    return float(np.sum((p - q) * np.log(p / q)))


def drift(current: ColumnStats, reference: ColumnStats, bins: int = PSI_BINS) -> Drift:
    """How ``current`` moved from ``reference``."""
    ref_std = reference.std
    if reference.count and ref_std > 0:
        mean_shift = (current.mean - reference.mean) / ref_std
        std_ratio = current.std / ref_std
    else:
        same = current.count and reference.count and current.mean == reference.mean
        mean_shift = 0.0 if same else math.nan
        std_ratio = math.nan
    return Drift(
        psi=psi(current.sketch, reference.sketch, bins),
        mean_shift=mean_shift,
        std_ratio=std_ratio,
        count=current.count,
        reference_count=reference.count,
        nonfinite=_nonfinite(current),
        reference_nonfinite=_nonfinite(reference),
    )


def _nonfinite(stats: ColumnStats) -> float:
    return (stats.nan + stats.inf) / stats.values if stats.values else 0.0


def compare(
    outputs: Mapping[str, ColumnStats],
    reference_outputs: Mapping[str, ColumnStats],
    inputs: Mapping[str, ColumnStats],
    reference_inputs: Mapping[str, ColumnStats],
    bins: int = PSI_BINS,
) -> Comparison:
    """The drift of every column both sides have statistics for."""
    missing: list[str] = []

    def side(name: str, a: Mapping[str, ColumnStats], b: Mapping[str, ColumnStats]) -> Any:
        missing.extend(f"{name} {c}" for c in list(a) + list(b) if (c in a) != (c in b))
        return {c: drift(a[c], b[c], bins) for c in a if c in b}

    result_outputs = side("output", outputs, reference_outputs)
    result_inputs = side("input", inputs, reference_inputs) if inputs and reference_inputs else {}
    return Comparison(result_outputs, result_inputs, missing)
