"""A mergeable, range-free quantile sketch: :class:`LogSketch` (DDSketch-style log buckets).

Drift statistics need a distribution summary that is computed per Arrow batch
on the executors, merged across tasks on the driver, small enough to travel in
a task's record, and correct without knowing the values' range up front (a
fixed-bucket histogram needs one). DDSketch (Masson, Rim and Lee, VLDB 2019)
fits: a value ``x`` goes to bucket ``ceil(log(|x|) / log(gamma))`` of its
sign's store, with ``gamma = (1 + a) / (1 - a)``; every quantile it returns is
within relative accuracy ``a`` of the true one (of ``|x|``, with the sign), and
merging is adding bucket counts, so a merged sketch equals the sketch of the
union. Exact zeros are counted apart.

Bounded: each sign keeps at most ``max_buckets`` consecutive buckets; those
below (the smallest magnitudes) collapse into the lowest kept one (DDSketch's
"collapsing lowest" store). With ``a = 0.01`` 1024 buckets span |x| over 9
orders of magnitude below the largest; a task's record carries two arrays of
at most that many counts. Collapsing keeps merge == union: a value collapsed
in one part is below the threshold of the merged sketch too.

>>> import numpy as np
>>> from torchspark.spark.sketch import LogSketch
>>> sketch = LogSketch.of(np.arange(1.0, 1001.0))
>>> abs(sketch.quantile(0.5) - 500.0) <= 0.01 * 500.0
True
"""

from __future__ import annotations

import math

import numpy as np

RELATIVE_ACCURACY = 0.01
MAX_BUCKETS = 1024  # per sign; see the module docstring for the span it covers


class _Store:
    """Counts of consecutive bucket indices ``offset, offset + 1, ...`` (int64)."""

    __slots__ = ("counts", "offset")

    def __init__(self, offset: int = 0, counts: np.ndarray | None = None) -> None:
        self.offset = offset
        self.counts = counts if counts is not None else np.zeros(0, dtype=np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def __getstate__(self) -> tuple[int, np.ndarray]:
        # Pickled into task records: counts in the narrowest unsigned type that
        # holds them (uint16 for tasks of up to 65,535 values per bucket), a
        # quarter of int64's bytes.
        largest = int(self.counts.max()) if self.counts.size else 0
        return self.offset, self.counts.astype(np.min_scalar_type(largest))

    def __setstate__(self, state: tuple[int, np.ndarray]) -> None:
        self.offset, counts = state
        self.counts = counts.astype(np.int64)

    def add_indices(self, indices: np.ndarray, max_buckets: int) -> None:
        if indices.size == 0:
            return
        top = int(indices.max())
        indices = np.maximum(indices, top - max_buckets + 1)  # collapse the lowest
        low = int(indices.min())
        self.merge(_Store(low, np.bincount(indices - low).astype(np.int64)), max_buckets)

    def merge(self, other: _Store, max_buckets: int) -> None:
        if other.counts.size == 0:
            return
        if self.counts.size == 0:
            low, high = other.offset, other.offset + other.counts.size
        else:
            low = min(self.offset, other.offset)
            high = max(self.offset + self.counts.size, other.offset + other.counts.size)
        merged = np.zeros(high - low, dtype=np.int64)
        for store in (self, other):
            if store.counts.size:
                start = store.offset - low
                merged[start : start + store.counts.size] += store.counts
        if merged.size > max_buckets:
            cut = merged.size - max_buckets
            merged[cut] += merged[:cut].sum()
            merged = merged[cut:]
            low += cut
        nonzero = np.flatnonzero(merged)
        if nonzero.size == 0:
            self.offset, self.counts = 0, np.zeros(0, dtype=np.int64)
            return
        self.offset = low + int(nonzero[0])
        self.counts = merged[nonzero[0] : nonzero[-1] + 1].copy()


class LogSketch:
    """Quantiles of a stream of numbers within a relative accuracy, mergeable.

    Build one with :meth:`of` (whole arrays, vectorised), combine with
    :meth:`merge`, read with :meth:`quantile` or :meth:`buckets`. Only finite
    values belong in it (the caller counts NaN and infinities apart).

    >>> import numpy as np
    >>> from torchspark.spark.sketch import LogSketch
    >>> a, b = LogSketch.of(np.array([-2.0, 0.0, 3.0])), LogSketch.of(np.array([5.0]))
    >>> a.merge(b).count, round(a.quantile(0.0), 1), round(a.quantile(1.0), 1)
    (4, -2.0, 5.0)
    """

    def __init__(
        self, relative_accuracy: float = RELATIVE_ACCURACY, max_buckets: int = MAX_BUCKETS
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.relative_accuracy = relative_accuracy
        self.max_buckets = max_buckets
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.positive = _Store()
        self.negative = _Store()  # indexed by |x|
        self.zero = 0

    @classmethod
    def of(
        cls,
        values: np.ndarray,
        relative_accuracy: float = RELATIVE_ACCURACY,
        max_buckets: int = MAX_BUCKETS,
    ) -> LogSketch:
        """The sketch of ``values`` (finite numbers, any numeric dtype)."""
        sketch = cls(relative_accuracy, max_buckets)
        sketch.add(values)
        return sketch

    def add(self, values: np.ndarray) -> LogSketch:
        """Adds ``values`` (whole-array numpy operations, no loop per value); returns self."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return self
        zeros = values.size - np.count_nonzero(values)
        if zeros:
            self.zero += int(zeros)
            values = values[values != 0.0]
        index = np.log(np.abs(values))
        index *= 1.0 / self._log_gamma
        index = np.ceil(index, out=index).astype(np.int64)
        negative = values < 0.0
        if negative.any():
            self.positive.add_indices(index[~negative], self.max_buckets)
            self.negative.add_indices(index[negative], self.max_buckets)
        else:
            self.positive.add_indices(index, self.max_buckets)
        return self

    def merge(self, other: LogSketch) -> LogSketch:
        """Adds ``other``'s counts (the same relative accuracy); returns self."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge sketches of relative accuracy {self.relative_accuracy} and "
                f"{other.relative_accuracy}"
            )
        self.positive.merge(other.positive, self.max_buckets)
        self.negative.merge(other.negative, self.max_buckets)
        self.zero += other.zero
        return self

    @property
    def count(self) -> int:
        return self.positive.total + self.negative.total + self.zero

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, counts) ascending: each bucket's representative value (within
        the relative accuracy of every value in it) and how many fell in it."""

        def values_of(store: _Store) -> np.ndarray:
            index = np.arange(store.offset, store.offset + store.counts.size, dtype=np.float64)
            return 2.0 * np.power(self._gamma, index) / (self._gamma + 1.0)

        negative = -values_of(self.negative)[::-1]
        values = np.concatenate([negative, [0.0] if self.zero else [], values_of(self.positive)])
        counts = np.concatenate(
            [
                self.negative.counts[::-1],
                np.array([self.zero] if self.zero else [], dtype=np.int64),
                self.positive.counts,
            ]
        )
        keep = counts > 0
        return values[keep], counts[keep]

    def quantile(self, q: float) -> float:
        """The value of rank ``floor(q * (count - 1))`` in sorted order (numpy's
        ``method="lower"``), within the relative accuracy; NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        values, counts = self.buckets()
        total = int(counts.sum())
        if total == 0:
            return math.nan
        rank = math.floor(q * (total - 1))
        return float(values[int(np.searchsorted(np.cumsum(counts), rank, side="right"))])
