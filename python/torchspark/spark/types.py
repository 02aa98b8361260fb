"""The one table of torch <-> Spark types.

Every place that maps a dtype to a Spark type, or a Spark column type to what
an input can take, reads :data:`_TABLE`: output columns (a tensor's Spark
type), packed inputs (the SQL type the JVM casts to) and the driver's column
checks (which Spark types are numbers, which are integers).
"""

from __future__ import annotations

from typing import Any

import torch

# torch dtype, Spark SQL name (DataType.simpleString()), pyspark.sql.types class
_TABLE: tuple[tuple[torch.dtype, str, str], ...] = (
    (torch.float32, "float", "FloatType"),
    (torch.float64, "double", "DoubleType"),
    (torch.int64, "bigint", "LongType"),
    (torch.int32, "int", "IntegerType"),
    (torch.int16, "smallint", "ShortType"),
    (torch.int8, "tinyint", "ByteType"),
    (torch.bool, "boolean", "BooleanType"),
)
# dtypes Spark has no type for, and the dtype each widens to (exactly) on the way out.
_WIDENED = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.uint8: torch.int16}
_INTEGRAL = (torch.int64, torch.int32, torch.int16, torch.int8)

_SQL = {dtype: sql for dtype, sql, _ in _TABLE}
_BY_SQL = {sql: dtype for dtype, sql, _ in _TABLE}
_CLASS = {dtype: cls for dtype, _, cls in _TABLE}


def widened(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` is exported as (itself when Spark has it)."""
    return _WIDENED.get(dtype, dtype)


def exportable(t: torch.Tensor) -> torch.Tensor:
    """``t``, converted only where Spark lacks its dtype (half -> float, uint8 -> int16)."""
    dtype = widened(t.dtype)
    return t if dtype == t.dtype else t.to(dtype)


def sql_type(dtype: torch.dtype, what: str) -> str:
    """The Spark SQL type name of ``dtype`` (widened), e.g. for a CAST."""
    name = _SQL.get(widened(dtype))
    if name is None:
        raise TypeError(
            f"{what}: dtype {dtype} has no Spark type; expected one of "
            f"{[str(d) for d in (*_SQL, *_WIDENED)]}"
        )
    return name


def spark_type(dtype: torch.dtype, dims: int, what: str) -> Any:
    """The Spark type of a column whose rows are ``dims``-dimensional tensors of ``dtype``."""
    from pyspark.sql import types as T

    sql_type(dtype, what)  # raises for a dtype Spark has no type for
    result = getattr(T, _CLASS[widened(dtype)])()
    for _ in range(dims):
        result = T.ArrayType(result, containsNull=False)
    return result


def column_dtype(t: Any) -> torch.dtype | None:
    """The dtype of a numeric or boolean scalar Spark type, None for any other type."""
    return _BY_SQL.get(t.simpleString())


def is_number(t: Any) -> bool:
    """A numeric or boolean scalar Spark type."""
    return column_dtype(t) is not None


def is_integral(t: Any) -> bool:
    return column_dtype(t) in _INTEGRAL
