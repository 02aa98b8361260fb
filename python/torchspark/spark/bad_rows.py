"""Bad rows: finding the rows an Arrow batch failed on, and what becomes of them.

With ``on_error="null"`` or ``"quarantine"`` (:class:`BadRowPolicy`), an Arrow
batch whose conversion, tokenization, decoding or model call failed is
bisected (:func:`isolate`): each half is run again, a failing half split again,
down to single rows; the rows that fail alone are the bad rows, every other
row is scored. The runs go through a sibling of the task's engine (the same
loaded model, its own queue: see ``Engine.sibling``), so a half is never
batched with rows of another Arrow batch and blamed for them. A batch with k
bad rows of n costs about 2k log2(n/k) extra model calls, paid only when a
batch fails. Outputs with NaN or Inf are counted per output, and with
``check_finite`` their rows are bad rows too.

:func:`assemble` makes the batch's outputs from the pieces: the bad rows' outputs
null with their error in the error column (``"null"``), or the bad rows left
out and returned, with the error, to be set aside (``"quarantine"``, see
:mod:`.quarantine`). :class:`BadRowLog` counts a task's bad rows by reason and
enforces ``max_bad_rows``.
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadRowsError, EngineClosedError, ModelError
from . import outputs as out

ON_ERROR = ("raise", "null", "quarantine")

# Without max_bad_rows, a task whose first this many isolated rows all failed
# (and no row succeeded) is failed: every row failing is a broken model or
# input, not bad rows, and bisecting it would cost two model calls per row.
SYSTEMIC_ROWS = 100
_EXAMPLES = 5  # first errors kept per task, with where they happened
_REASON_CHARS = 500
_ROW_IN_SLICE = re.compile(r" \(first in row \d+\)| in row \d+")


@dataclass(frozen=True)
class BadRowPolicy:
    """What a scoring job does with rows that fail (see :func:`bad_row_policy`)."""

    on_error: str = "raise"
    max_bad_rows: int | float | None = None
    check_finite: bool = False
    quarantine: str | None = None  # a directory for Parquet files, or None: to the driver
    error_column: str | None = "_error"  # None: no error column (torch_udf's one column)

    @property
    def isolates(self) -> bool:
        return self.on_error != "raise"

    @property
    def error_column_added(self) -> str | None:
        """The error column of the output: only with ``on_error="null"``."""
        return self.error_column if self.on_error == "null" and self.error_column else None


def bad_row_policy(
    on_error: str = "raise",
    max_bad_rows: int | float | None = None,
    check_finite: bool = False,
    quarantine: str | None = None,
    error_column: str | None = "_error",
) -> BadRowPolicy:
    """The checked policy of ``predict``'s bad-row arguments (``error_column``
    None: bad rows get null outputs and no error column, as in ``torch_udf``)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    if max_bad_rows is not None:
        if on_error == "raise":
            raise ValueError(
                "max_bad_rows applies with on_error='null' or 'quarantine' (with 'raise' the "
                "first bad row fails the job)"
            )
        whole = isinstance(max_bad_rows, int) and not isinstance(max_bad_rows, bool)
        fraction = isinstance(max_bad_rows, float) and 0.0 < max_bad_rows < 1.0
        if not (whole and max_bad_rows >= 0) and not fraction:
            raise ValueError(
                "max_bad_rows must be an int >= 0 (bad rows per task) or a float in (0, 1) "
                f"(a fraction of each task's rows), got {max_bad_rows!r}"
            )
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    if quarantine is not None:
        if on_error != "quarantine":
            raise ValueError(
                f"quarantine={quarantine!r} is where on_error='quarantine' writes bad rows; "
                f"on_error is {on_error!r}"
            )
        quarantine = str(quarantine)
    if error_column is not None and (not isinstance(error_column, str) or not error_column):
        raise ValueError(f"error_column must be a non-empty string, got {error_column!r}")
    return BadRowPolicy(on_error, max_bad_rows, check_finite, quarantine, error_column)


RAISE = BadRowPolicy()


@dataclass(eq=False)
class Segment:
    """Rows [start, start + count) of an Arrow batch: scored (``outputs``: the
    engine's flattened names and tensors) or one bad row (``error``)."""

    start: int
    count: int
    outputs: tuple[list[str], list[torch.Tensor]] | None = None
    error: str | None = None


def reason(error: BaseException) -> str:
    """A bad row's error in one line: the exception type and the model's or
    converter's own message (without the engine's batch and request numbers,
    which differ for every row, or a TorchScript traceback), so that rows
    failing for the same reason group together."""
    text = str(error.args[0]) if len(error.args) == 1 else str(error)
    if isinstance(error, ModelError):
        _, found, rest = text.partition(") failed: ")
        text = rest if found else text
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Traceback of TorchScript" in text and lines:
        text = lines[-1]  # the exception the script raised
    elif lines:
        text = lines[0]
    text = _ROW_IN_SLICE.sub("", text)  # the row of a one-row slice: 0, said by the caller
    return f"{type(error).__name__}: {text}"[:_REASON_CHARS]


def isolate(
    run: Callable[[Any], Any],
    batch: Any,
    error: Exception,
    found: Callable[[Segment], None] | None = None,
) -> list[Segment]:
    """The pieces of ``batch`` (which failed with ``error``) in row order:
    scored runs of rows and single bad rows, found by bisection with ``run``
    (the engine's ``run`` on an Arrow batch). ``found(segment)`` sees each
    piece as it is found, in row order (and may raise to stop)."""
    if batch.num_rows == 0:
        raise error  # no row to blame
    segments: list[Segment] = []

    def add(segment: Segment) -> None:
        segments.append(segment)
        if found is not None:
            found(segment)

    def split(start: int, count: int, failure: Exception) -> None:
        if count == 1:
            add(Segment(start, 1, error=reason(failure)))
            return
        half = count // 2
        for begin, rows in ((start, half), (start + half, count - half)):
            try:
                result = run(batch.slice(begin, rows))
            except EngineClosedError:
                raise
            except Exception as e:
                split(begin, rows, e)
            else:
                add(Segment(begin, rows, outputs=out.flatten(result)))

    split(0, batch.num_rows, error)
    return segments


def nonfinite_rows(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """Per output, a bool ``[rows]`` mask of the rows holding a NaN or Inf
    (None for an output that cannot hold one, or holds none)."""
    masks: list[torch.Tensor | None] = []
    for t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            masks.append(None)
            continue
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1))
        rows = bad.any(dim=1).cpu()
        masks.append(rows if bool(rows.any()) else None)
    return masks


def nonfinite_error(name: str, rows: int, first: int) -> ValueError:
    return ValueError(
        f"output '{name}': {rows} row{'s' if rows != 1 else ''} with NaN or Inf (first in row "
        f"{first}); check_finite=True makes such rows errors"
    )


def split_nonfinite(segments: list[Segment], names: list[str]) -> list[Segment]:
    """``segments`` with each row whose outputs hold a NaN or Inf made a bad row."""
    result: list[Segment] = []
    for segment in segments:
        if segment.outputs is None:
            result.append(segment)
            continue
        tensors = segment.outputs[1]
        masks = nonfinite_rows(tensors)
        bad: dict[int, str] = {}
        for name, mask in zip(names, masks, strict=True):
            if mask is not None:
                for row in torch.nonzero(mask).flatten().tolist():
                    bad.setdefault(row, f"ValueError: output '{name}' is NaN or Inf")
        if not bad:
            result.append(segment)
            continue
        run_start = 0
        for row in [*sorted(bad), segment.count]:
            if row > run_start:
                piece = [t[run_start:row] for t in tensors]
                result.append(
                    Segment(segment.start + run_start, row - run_start, (segment.outputs[0], piece))
                )
            if row < segment.count:
                result.append(Segment(segment.start + row, 1, error=bad[row]))
            run_start = row + 1
    return result


def assemble(
    batch: Any,
    keep: list[str],
    names: list[str],
    segments: list[Segment],
    policy: BadRowPolicy,
    types: list[Any],
) -> tuple[Any | None, Any | None]:
    """The output batch of ``batch`` from its ``segments`` (the ``keep``
    columns, the output columns ``names``, with ``"null"`` the error column),
    and its bad rows with their error to set aside (``"quarantine"``; else
    None). ``types``: the outputs' Arrow types, for a batch with no scored row.
    The output batch is None when no row is left (every row quarantined)."""
    import pyarrow as pa

    parts: list[list[Any]] = [[] for _ in names]
    errors: list[str | None] = []
    for segment in segments:
        if segment.outputs is None:
            errors.append(segment.error)
            for column in parts:
                column.append(None)
            continue
        errors.extend([None] * segment.count)
        piece = batch.slice(segment.start, segment.count)
        scored = out.record_batch(piece, [], names, segment.outputs[1])
        for i, column in enumerate(parts):
            column.append(scored.column(i))
    # A scored piece's type, else the declared one.
    kinds = [
        next((p.type for p in column if p is not None), t)
        for column, t in zip(parts, types, strict=True)
    ]
    bad = [i for i, e in enumerate(errors) if e is not None]
    error_array = pa.array(errors, pa.string())
    # The fields of the scored batches' (outputs.record_batch): kept fields as
    # they came (nullability included), outputs nullable.
    kept_fields = [batch.schema.field(k) for k in keep] + [
        pa.field(n, kind) for n, kind in zip(names, kinds, strict=True)
    ]
    if policy.on_error == "null":
        arrays = [
            pa.concat_arrays([p if p is not None else pa.nulls(1, kind) for p in column])
            for column, kind in zip(parts, kinds, strict=True)
        ]
        columns = [batch.column(k) for k in keep] + arrays
        fields = list(kept_fields)
        if policy.error_column_added is not None:
            columns.append(error_array)
            fields.append(pa.field(policy.error_column_added, pa.string()))
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields)), None
    good = pa.array([i for i, e in enumerate(errors) if e is None], pa.int64())
    rows = pa.array(bad, pa.int64())
    set_aside = pa.RecordBatch.from_arrays(
        [*batch.take(rows).columns, error_array.take(rows)],
        [*batch.schema.names, policy.error_column or "_error"],
    )
    if len(good) == 0:
        return None, set_aside
    arrays = [pa.concat_arrays([p for p in column if p is not None]) for column in parts]
    kept = [batch.column(k).take(good) for k in keep]
    return pa.RecordBatch.from_arrays(kept + arrays, schema=pa.schema(kept_fields)), set_aside


class BadRowLog:
    """A task's bad rows: counts by reason, the first few with where they
    were, the rows set aside, and the ``max_bad_rows`` limit."""

    def __init__(self, policy: BadRowPolicy, where: str, label: str | None) -> None:
        self.policy = policy
        self.where = where
        self.label = label
        self.count = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        self.set_aside: list[Any] = []
        self.scored = 0  # rows scored, for the no-row-succeeded check

    def segment(
        self, batch: Any, index: int, segment: Segment, *, was_scored: bool = False
    ) -> None:
        """Counts ``segment`` of Arrow batch ``index`` as it is found: scored
        rows, or a bad row (by reason; the first few with where they were).
        ``was_scored``: a row counted as scored before, now bad (NaN output).
        Raises :class:`BadRowsError` as soon as a limit is exceeded."""
        if segment.error is None:
            self.scored += segment.count
            return
        self.scored -= segment.count if was_scored else 0
        self.count += 1
        self.reasons[segment.error] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(self._located(batch, index, segment))
        self._check(rows=None)

    def keep(self, set_aside: Any) -> None:
        """Holds a batch's rows set aside until the task ends."""
        if set_aside is not None and set_aside.num_rows:
            self.set_aside.append(set_aside)

    def scored_rows(self, rows: int) -> None:
        """Counts the rows of a batch scored whole."""
        self.scored += rows

    def finish(self, rows: int) -> None:
        """The end-of-task check (a fraction needs the task's rows)."""
        self._check(rows)

    def _located(self, batch: Any, index: int, segment: Segment) -> str:
        at = f"Arrow batch {index}, row {segment.start}"
        if self.label is not None and self.label in batch.schema.names:
            with contextlib.suppress(Exception):  # a label is a courtesy
                at += f" ({self.label}={batch.column(self.label)[segment.start].as_py()!r})"
        return f"{at}: {segment.error}"

    def _check(self, rows: int | None) -> None:
        limit = self.policy.max_bad_rows
        if limit is None:
            if self.count >= SYSTEMIC_ROWS and self.scored == 0:
                raise BadRowsError(
                    f"{self.where}: the first {self.count} rows all failed and none was "
                    "scored: a broken model or input, not bad rows (set max_bad_rows to "
                    f"allow it); first errors: {'; '.join(self.examples)}"
                )
            return
        if isinstance(limit, float):
            if rows is None or self.count <= limit * rows:
                return
            allowed = f"max_bad_rows={limit} ({limit * rows:g} of its {rows} rows)"
        elif self.count <= limit:
            return
        else:
            allowed = f"max_bad_rows={limit}"
        raise BadRowsError(
            f"{self.where}: {self.count} bad rows, more than {allowed} allows; "
            f"by reason: {dict(self.reasons.most_common(5))}; first errors: "
            + "; ".join(self.examples)
        )


def count_nonfinite(
    names: list[str], tensors: Sequence[torch.Tensor], counts: dict[str, int]
) -> list[torch.Tensor | None]:
    """Adds the rows with NaN or Inf in each output to ``counts``; returns the masks."""
    masks = nonfinite_rows(tensors)
    for name, mask in zip(names, masks, strict=True):
        if mask is not None:
            counts[name] = counts.get(name, 0) + int(mask.sum())
    return masks
