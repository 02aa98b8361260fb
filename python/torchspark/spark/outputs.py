"""Model outputs -> columns: their names, their Spark types, their Arrow arrays.

One rule for the shape of a column: a row's value is the output tensor's row,
except that a model with one value per row, ``[N]`` or ``[N, 1]``, gives a
scalar column (``float``, not ``array<float>`` of length 1), as Spark's
``predict_batch_udf`` does. ``[N, 1]`` is flattened to ``[N]`` by a view (no
copy) before export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import types


def flatten(result: Any) -> tuple[list[str], list[torch.Tensor]]:
    """The engine's result as (names, tensors): names are "" unless it was a dict."""
    if isinstance(result, torch.Tensor):
        return [""], [result]
    if isinstance(result, dict):
        return list(result), list(result.values())
    return [""] * len(result), list(result)


def output_names(output: str | Sequence[str], names: list[str], count: int) -> list[str]:
    """Column names: those given, a dict's keys, or ``output`` (numbered if several)."""
    if not isinstance(output, str):
        given = list(output)
        if len(given) != count:
            raise ValueError(
                f"output: the model returns {count} outputs but {len(given)} names were given: "
                f"{given}"
            )
        return given
    if any(names):
        return list(names)  # a dict output: its keys
    return [output] if count == 1 else [f"{output}_{i}" for i in range(count)]


def per_row(t: torch.Tensor) -> torch.Tensor:
    """``t`` with one value per row as ``[N]`` (a view); any other shape as it is."""
    return t.squeeze(1) if t.dim() == 2 and t.shape[1] == 1 else t


def spark_type(t: torch.Tensor, name: str) -> Any:
    """The Spark type of the column output ``name`` (a batch of rows ``t``) becomes."""
    t = per_row(t)
    return types.spark_type(t.dtype, t.dim() - 1, f"output '{name}'")


def column_tensor(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t`` as the column's tensor: one value per row flattened,
    a dtype Spark has (a view where it already is one)."""
    return types.exportable(per_row(t)).detach()


def record_batch(batch: Any, keep: list[str], names: list[str], tensors: list[torch.Tensor]) -> Any:
    """The output batch: ``keep`` columns of the input ``batch`` and the output
    columns, assembled natively in one call (the kept columns re-exported
    zero-copy, contiguous outputs zero-copy; see csrc/torchspark/arrow/arrow_batch.h)."""
    import pyarrow as pa

    from .. import _C

    columns = [column_tensor(t) for t in tensors]
    return pa.record_batch(_C.BatchExport(batch, keep, names, columns))
