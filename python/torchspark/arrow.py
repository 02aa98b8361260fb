"""Arrow <-> torch conversion.

Inputs are any object implementing the Arrow PyCapsule interface
(``__arrow_c_array__`` or ``__arrow_c_stream__``): pyarrow Arrays,
ChunkedArrays, RecordBatches and Tables, nanoarrow, polars, DuckDB results,
and the batches Spark's ``mapInArrow`` hands a Python worker.

Zero-copy results share memory with the Arrow buffers (which Arrow treats as
immutable): read them, do not write into them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from . import _C

__all__ = ["from_tensor", "gather", "pad", "to_batch", "to_tensor", "to_tensors"]


def _shape(shape: Sequence[int] | int | None) -> list[int] | None:
    if shape is None:
        return None
    if isinstance(shape, int):
        return [shape]
    return [int(d) for d in shape]


def to_tensor(
    col: Any,
    *,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
    fill: float | int | bool = 0,
    dictionary: str = "indices",
    shape: Sequence[int] | int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Convert one Arrow column to a tensor, without a copy where the layout allows.

    Zero-copy (the tensor views the Arrow buffer): numeric columns (int8..uint64,
    float16/32/64), ``list``/``large_list`` whose rows all have one length D and
    ``fixed_size_list[D]`` (to ``[N, D]``; nested lists to ``[N, D1, D2, ...]``),
    ``binary``/``fixed_size_binary`` cells holding raw tensor bytes (to
    ``[N, *shape]`` of ``dtype``), and a dictionary column's indices. One copy:
    booleans (bit-packed in Arrow), nulls under ``"fill"``/``"mask"``, buffers not
    aligned to the element size, a ``dtype`` cast, several chunks. Dates, times,
    durations and timestamps without a time zone become their integer storage.

    Args:
        col: an Arrow array or chunked array (one column).
        dtype: cast to this dtype (a copy only if it differs). For binary
            columns, the element type the bytes hold (default ``torch.uint8``).
        nulls: ``"error"`` (default) raises :class:`NullValueError` naming the
            column, the null count and the first null row; ``"fill"`` writes
            ``fill`` at nulls; ``"mask"`` returns ``(values, valid_mask)`` with
            ``fill`` under the nulls. Values under null slots are never read.
        fill: the value for null slots.
        dictionary: ``"indices"`` (default) or ``"decode"`` for a
            dictionary-encoded column.
        shape: binary columns only: the shape of one row.

    >>> import pyarrow as pa, torch, torchspark
    >>> torchspark.to_tensor(pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())))
    tensor([[1., 2.],
            [3., 4.]])
    >>> torchspark.to_tensor(pa.array([1, None, 3]), nulls="mask")
    (tensor([1, 0, 3]), tensor([ True, False,  True]))
    """
    return _C.to_tensor(col, dtype, nulls, fill, dictionary, _shape(shape))


def to_tensors(
    batch: Any, columns: Sequence[str] | None = None, **options: Any
) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Convert several columns of a record batch or table, one tensor each.

    ``columns`` selects and orders them (default: all); ``options`` are those of
    :func:`to_tensor` and apply to every selected column.

    >>> import pyarrow as pa, torchspark
    >>> batch = pa.record_batch({"id": [7, 8], "x": [0.5, 1.5]})
    >>> torchspark.to_tensors(batch, ["x"])
    {'x': tensor([0.5000, 1.5000], dtype=torch.float64)}
    """
    unknown = set(options) - {"dtype", "nulls", "fill", "dictionary", "shape"}
    if unknown:
        raise TypeError(
            f"to_tensors: unexpected options {sorted(unknown)}; "
            "expected dtype, nulls, fill, dictionary, shape"
        )
    return _C.to_tensors(
        batch,
        None if columns is None else list(columns),
        options.get("dtype"),
        options.get("nulls", "error"),
        options.get("fill", 0),
        options.get("dictionary", "indices"),
        _shape(options.get("shape")),
    )


def gather(
    batch: Any,
    columns: Sequence[str] | None = None,
    *,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
    fill: float | int | bool = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gather F scalar numeric columns into one row-major ``[N, F]`` tensor.

    The input of a tabular model. One native, cache-blocked pass with the cast
    to ``dtype`` fused in, split across torch's intra-op threads for large N.
    Columns keep the order given. With ``out`` the rows are written into that
    (contiguous, CPU, ``[N, F]``) tensor, which is returned.

    Args:
        batch: a record batch or table (anything with the Arrow PyCapsule interface).
        columns: the column names (default: all).
        dtype: the output dtype; default ``out.dtype`` if ``out`` is given, else
            ``torch.float32``.
        nulls: ``"error"`` (default) or ``"fill"``.
        fill: the value for null slots under ``"fill"``.
        out: an optional preallocated output.

    >>> import pyarrow as pa, torch, torchspark
    >>> batch = pa.record_batch({"a": [1, 2], "b": [0.5, 0.25]})
    >>> torchspark.gather(batch, ["b", "a"], dtype=torch.float64)
    tensor([[0.5000, 1.0000],
            [0.2500, 2.0000]], dtype=torch.float64)
    """
    if dtype is None:
        dtype = out.dtype if out is not None else torch.float32
    return _C.gather(batch, None if columns is None else list(columns), dtype, nulls, fill, out)


def pad(
    col: Any,
    *,
    max_len: int | None = None,
    pad_value: float | int | bool = 0,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a ragged ``list``/``large_list`` column (token ids) to ``[N, L]``.

    Returns ``(values, lengths)``: L is the longest row, capped by ``max_len``
    (longer rows are truncated and ``lengths`` gives the kept length). One
    native pass. ``nulls="fill"`` turns a null row into an empty one and a null
    element into ``pad_value``; the default raises.

    >>> import pyarrow as pa, torchspark
    >>> values, lengths = torchspark.pad(pa.array([[5, 6, 7], [8]]), pad_value=-1)
    >>> values
    tensor([[ 5,  6,  7],
            [ 8, -1, -1]])
    >>> lengths
    tensor([3, 1])
    """
    return _C.pad(col, max_len, pad_value, dtype, nulls)


def from_tensor(t: torch.Tensor, *, fixed_size_list: bool = False) -> Any:
    """Wrap a tensor as a ``pyarrow.Array``, zero-copy for a contiguous CPU tensor.

    The Arrow buffer is the tensor's memory and keeps it alive. 1-D becomes a
    primitive array (bool is bit-packed, so copied); ``[N, D]`` becomes
    ``list<T>`` (Spark's ``array<T>``; ``fixed_size_list=True`` gives
    ``fixed_size_list<T>[D]``, which Spark rejects on output); 3-D and more
    become nested lists. float16 stays float16; bfloat16, which Arrow lacks,
    becomes float32 (exactly). Other tensors are first made contiguous on the CPU.

    >>> import torch, torchspark
    >>> torchspark.from_tensor(torch.tensor([[1.0, 2.0], [3.0, 4.0]])).type
    ListType(list<item: float>)
    """
    import pyarrow as pa

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"from_tensor: expected a torch.Tensor, got {type(t).__name__}")
    return pa.array(_C.TensorExport(t, fixed_size_list))


def to_batch(
    columns: Mapping[str, Any] | Iterable[tuple[str, Any]], *, fixed_size_list: bool = False
) -> Any:
    """Build a ``pyarrow.RecordBatch`` from named tensors and Arrow arrays.

    Tensors go through :func:`from_tensor` (zero-copy); pyarrow arrays (for
    example the pass-through columns of the input batch) are used as they are.
    All columns must have the same number of rows.

    >>> import pyarrow as pa, torch, torchspark
    >>> batch = torchspark.to_batch({"id": pa.array([1, 2]), "score": torch.tensor([0.5, 0.9])})
    >>> batch.schema.names, batch.num_rows
    (['id', 'score'], 2)
    """
    import pyarrow as pa

    pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    names: list[str] = []
    arrays: list[Any] = []
    for name, value in pairs:
        if isinstance(value, torch.Tensor):
            value = from_tensor(value, fixed_size_list=fixed_size_list)
        elif isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        elif not isinstance(value, pa.Array):
            raise TypeError(
                f"to_batch: column '{name}': expected a torch.Tensor or pyarrow.Array, "
                f"got {type(value).__name__}"
            )
        if arrays and len(value) != len(arrays[0]):
            raise ValueError(
                f"to_batch: column '{name}' has {len(value)} rows but column "
                f"'{names[0]}' has {len(arrays[0])}"
            )
        names.append(str(name))
        arrays.append(value)
    return pa.RecordBatch.from_arrays(arrays, names=names)
