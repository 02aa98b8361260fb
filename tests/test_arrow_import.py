"""Example-based tests of torchspark.to_tensor / to_tensors (Arrow -> torch import).

Every result is compared against an independent reference (numpy built from the same
Python values, or pyarrow's own conversion), with its dtype and shape, and zero-copy is
asserted where the contract promises it: the tensor's data pointer is the address of the
Arrow data buffer plus the array's offset.
"""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark import NullValueError, UnsupportedTypeError

# ---------------------------------------------------------------------------
# helpers

# (arrow type, torch dtype, numpy dtype)
PRIMITIVES = [
    (pa.int8(), torch.int8, np.int8),
    (pa.int16(), torch.int16, np.int16),
    (pa.int32(), torch.int32, np.int32),
    (pa.int64(), torch.int64, np.int64),
    (pa.uint8(), torch.uint8, np.uint8),
    (pa.uint16(), torch.uint16, np.uint16),
    (pa.uint32(), torch.uint32, np.uint32),
    (pa.uint64(), torch.uint64, np.uint64),
    (pa.float16(), torch.float16, np.float16),
    (pa.float32(), torch.float32, np.float32),
    (pa.float64(), torch.float64, np.float64),
]
PRIMITIVE_IDS = [str(p[0]) for p in PRIMITIVES]


def sample_values(np_dtype, n: int = 10) -> np.ndarray:
    """n values of np_dtype including the type's extremes (and inf / -0.0 for floats)."""
    np_dtype = np.dtype(np_dtype)
    if np_dtype.kind in "iu":
        info = np.iinfo(np_dtype)
        base = [info.min, info.max, 0, 1, info.max - 1, info.min + 1]
    else:
        base = [np.inf, -np.inf, -0.0, 0.5, -1.25, np.finfo(np_dtype).max]
    extra = [(i * 7) % 100 for i in range(max(0, n - len(base)))]
    return np.array((base + extra)[:n], dtype=np_dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


def check(t, expected, dtype: torch.dtype) -> None:
    """Asserts t is a tensor of `dtype` with the shape and values of `expected`."""
    expected = np.asarray(expected)
    assert isinstance(t, torch.Tensor), type(t)
    assert t.dtype == dtype, (t.dtype, dtype)
    assert tuple(t.shape) == expected.shape, (tuple(t.shape), expected.shape)
    got = to_numpy(t)
    if dtype != torch.bfloat16:
        assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected)


def leaf_address(arr: pa.Array) -> int:
    """The address of the first leaf value of a null-free (possibly sliced) array."""
    typ = arr.type
    if pa.types.is_dictionary(typ):
        return leaf_address(arr.indices)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        # A sliced list array slices its offsets; the child array is not sliced.
        return leaf_address(arr.values.slice(arr.offsets[0].as_py()))
    if pa.types.is_fixed_size_list(typ):
        return leaf_address(arr.values.slice(arr.offset * typ.list_size))
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        offset_type = np.int32 if pa.types.is_binary(typ) else np.int64
        offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type)
        return arr.buffers()[2].address + int(offsets[arr.offset])
    if pa.types.is_fixed_size_binary(typ):
        return arr.buffers()[1].address + arr.offset * typ.byte_width
    return arr.buffers()[1].address + arr.offset * (typ.bit_width // 8)


def assert_zero_copy(t: torch.Tensor, arr) -> None:
    if isinstance(arr, pa.ChunkedArray):
        assert arr.num_chunks == 1
        arr = arr.chunk(0)
    assert t.data_ptr() == leaf_address(arr)


def buffer_ranges(arr: pa.Array) -> list[tuple[int, int]]:
    """(start, end) address ranges of every buffer of arr and its children."""
    ranges = []
    for buf in arr.buffers():
        if buf is not None:
            ranges.append((buf.address, buf.address + buf.size))
    return ranges


def assert_not_aliasing(t: torch.Tensor, arr) -> None:
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    lo = t.data_ptr()
    hi = lo + t.numel() * t.element_size()
    for chunk in chunks:
        for start, end in buffer_ranges(chunk):
            assert hi <= start or lo >= end, "the tensor aliases an Arrow buffer"


def nulls_reference(values: list, fill, np_dtype, row_size: int | None = None):
    """(filled values, valid mask) for a python list with None at nulls; list rows of
    row_size elements may themselves be None or hold None elements."""
    if row_size is None:
        data = [fill if v is None else v for v in values]
        mask = [v is not None for v in values]
    else:
        data, mask = [], []
        for row in values:
            if row is None:
                data.append([fill] * row_size)
                mask.append([False] * row_size)
            else:
                data.append([fill if v is None else v for v in row])
                mask.append([v is not None for v in row])
    return np.array(data, dtype=np_dtype), np.array(mask, dtype=bool)


# ---------------------------------------------------------------------------
# primitives


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
def test_primitive_is_zero_copy(pa_type, dtype, np_dtype):
    values = sample_values(np_dtype)
    arr = pa.array(values, type=pa_type)
    t = torchspark.to_tensor(arr)
    check(t, arr.to_numpy(zero_copy_only=False), dtype)
    check(t, values, dtype)
    assert_zero_copy(t, arr)


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
@pytest.mark.parametrize(("offset", "length"), [(0, 4), (3, 5), (7, 3), (10, 0), (1, 9)])
def test_primitive_slice_is_zero_copy(pa_type, dtype, np_dtype, offset, length):
    values = sample_values(np_dtype)
    arr = pa.array(values, type=pa_type).slice(offset, length)
    t = torchspark.to_tensor(arr)
    check(t, values[offset : offset + length], dtype)
    if length:
        assert_zero_copy(t, arr)


def test_bool_is_copied_from_bits():
    values = [True, False, True, True, False, False, True, True, False, True, True]
    arr = pa.array(values)
    t = torchspark.to_tensor(arr)
    check(t, np.array(values), torch.bool)
    assert_not_aliasing(t, arr)


@pytest.mark.parametrize(("offset", "length"), [(3, 5), (1, 9), (8, 3), (5, 0)])
def test_bool_slice_at_bit_offset(offset, length):
    values = [bool((i * 5) % 3) for i in range(11)]
    t = torchspark.to_tensor(pa.array(values).slice(offset, length))
    check(t, np.array(values[offset : offset + length], dtype=bool), torch.bool)


@pytest.mark.parametrize(
    ("pa_type", "dtype", "np_dtype"),
    [
        (pa.date32(), torch.int32, np.int32),
        (pa.date64(), torch.int64, np.int64),
        (pa.timestamp("s"), torch.int64, np.int64),
        (pa.timestamp("ms"), torch.int64, np.int64),
        (pa.timestamp("us"), torch.int64, np.int64),
        (pa.timestamp("ns"), torch.int64, np.int64),
        (pa.duration("s"), torch.int64, np.int64),
        (pa.duration("ms"), torch.int64, np.int64),
        (pa.duration("us"), torch.int64, np.int64),
        (pa.duration("ns"), torch.int64, np.int64),
        (pa.time32("s"), torch.int32, np.int32),
        (pa.time32("ms"), torch.int32, np.int32),
        (pa.time64("us"), torch.int64, np.int64),
        (pa.time64("ns"), torch.int64, np.int64),
    ],
    ids=str,
)
def test_temporal_types_give_integer_storage(pa_type, dtype, np_dtype):
    ints = [0, 1, 86_399, 59, 17_000, 3_599]
    if pa.types.is_date64(pa_type):
        ints = [i * 86_400_000 for i in ints]  # date64 holds whole days in ms
    storage = pa.int32() if dtype == torch.int32 else pa.int64()
    arr = pa.array(ints, type=storage).view(pa_type)
    assert arr.type == pa_type
    t = torchspark.to_tensor(arr)
    check(t, np.array(ints, dtype=np_dtype), dtype)
    assert_zero_copy(t, arr)
    sliced = arr.slice(2, 3)
    t = torchspark.to_tensor(sliced)
    check(t, np.array(ints[2:5], dtype=np_dtype), dtype)
    assert_zero_copy(t, sliced)


def _sparse_union():
    return pa.UnionArray.from_sparse(
        pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array([1.0, 2.0])]
    )


def _dense_union():
    return pa.UnionArray.from_dense(
        pa.array([0, 1], pa.int8()), pa.array([0, 0], pa.int32()), [pa.array([1]), pa.array([2.0])]
    )


UNSUPPORTED = [
    ("timestamp_tz", lambda: pa.array([1, 2], pa.timestamp("us", tz="UTC")), "timestamp"),
    ("string", lambda: pa.array(["a", "b"]), "utf8"),
    ("large_string", lambda: pa.array(["a", "b"], pa.large_string()), "utf8"),
    ("decimal", lambda: pa.array([1, 2], pa.decimal128(5, 2)), "decimal"),
    (
        "map",
        lambda: pa.array([[(1, 2)], [(3, 4)]], pa.map_(pa.int32(), pa.int32())),
        "map",
    ),
    ("struct", lambda: pa.array([{"a": 1}, {"a": 2}]), "struct"),
    ("sparse_union", _sparse_union, "union"),
    ("dense_union", _dense_union, "union"),
    ("null", lambda: pa.array([None, None], pa.null()), "null"),
    ("list_of_string", lambda: pa.array([["a"], ["b"]]), "utf8"),
]


@pytest.mark.parametrize(
    ("make", "type_name"), [u[1:] for u in UNSUPPORTED], ids=[u[0] for u in UNSUPPORTED]
)
def test_unsupported_type_names_column_and_type(make, type_name):
    assert issubclass(UnsupportedTypeError, TypeError)
    batch = pa.record_batch({"ok": pa.array([1, 2]), "weird_col": make()})
    with pytest.raises(UnsupportedTypeError) as info:
        torchspark.to_tensors(batch)
    message = str(info.value)
    assert "weird_col" in message
    assert type_name in message.lower()
    with pytest.raises(TypeError):
        torchspark.to_tensors(batch, ["weird_col"])


@pytest.mark.parametrize(
    ("make", "type_name"), [u[1:] for u in UNSUPPORTED], ids=[u[0] for u in UNSUPPORTED]
)
def test_unsupported_type_as_single_array(make, type_name):
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensor(make())


def test_unsupported_timestamp_message_names_time_zone():
    batch = pa.record_batch({"when": pa.array([1], pa.timestamp("ms", tz="Europe/Paris"))})
    with pytest.raises(UnsupportedTypeError, match="Europe/Paris"):
        torchspark.to_tensors(batch)


# ---------------------------------------------------------------------------
# lists

LIST_VALUE_TYPES = [
    (pa.float32(), torch.float32, np.float32),
    (pa.float64(), torch.float64, np.float64),
    (pa.float16(), torch.float16, np.float16),
    (pa.int64(), torch.int64, np.int64),
    (pa.uint16(), torch.uint16, np.uint16),
    (pa.int8(), torch.int8, np.int8),
]


def make_list(kind: str, flat: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    values = pa.array(flat, type=value_type)
    n = len(flat) // width if width else 0
    if kind == "list":
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
        return pa.ListArray.from_arrays(offsets, values)
    if kind == "large_list":
        offsets = pa.array(np.arange(n + 1, dtype=np.int64) * width)
        return pa.LargeListArray.from_arrays(offsets, values)
    return pa.FixedSizeListArray.from_arrays(values, width)


LIST_KINDS = ["list", "large_list", "fixed_size_list"]


@pytest.mark.parametrize("kind", LIST_KINDS)
@pytest.mark.parametrize(
    ("value_type", "dtype", "np_dtype"), LIST_VALUE_TYPES, ids=[str(v[0]) for v in LIST_VALUE_TYPES]
)
def test_uniform_list_is_zero_copy(kind, value_type, dtype, np_dtype):
    flat = sample_values(np_dtype, 12)
    arr = make_list(kind, flat, 3, value_type)
    t = torchspark.to_tensor(arr)
    check(t, np.stack(arr.to_numpy(zero_copy_only=False)), dtype)
    check(t, flat.reshape(4, 3), dtype)
    assert_zero_copy(t, arr)


def test_list_from_python_lists():
    rows = [[0.5, 1.5], [2.5, 3.5], [-1.0, 7.0]]
    arr = pa.array(rows, pa.list_(pa.float32()))
    t = torchspark.to_tensor(arr)
    check(t, np.array(rows, dtype=np.float32), torch.float32)
    assert_zero_copy(t, arr)


@pytest.mark.parametrize("kind", LIST_KINDS)
@pytest.mark.parametrize(("offset", "length"), [(1, 3), (4, 2), (0, 6), (5, 1), (6, 0), (2, 0)])
def test_list_slice_is_zero_copy(kind, offset, length):
    flat = np.arange(12, dtype=np.float32) * 1.5
    arr = make_list(kind, flat, 2, pa.float32()).slice(offset, length)
    if kind != "fixed_size_list":
        # The slice lives in the offsets: the child array itself is not sliced.
        assert arr.offsets[0].as_py() == 2 * offset
        assert len(arr.values) == 12
    t = torchspark.to_tensor(arr)
    expected = flat.reshape(6, 2)[offset : offset + length]
    if length:
        check(t, expected, torch.float32)
        assert_zero_copy(t, arr)
    else:
        assert t.dtype == torch.float32 and t.dim() == 2 and t.shape[0] == 0


def test_list_over_sliced_child_is_zero_copy():
    values = pa.array(np.arange(10, dtype=np.float32))
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6], pa.int32()), values.slice(3))
    t = torchspark.to_tensor(arr)
    check(t, np.arange(3, 9, dtype=np.float32).reshape(3, 2), torch.float32)
    assert t.data_ptr() == values.buffers()[1].address + 3 * 4
    fsl = pa.FixedSizeListArray.from_arrays(values.slice(1), 3).slice(1, 2)
    t = torchspark.to_tensor(fsl)
    check(t, np.arange(4, 10, dtype=np.float32).reshape(2, 3), torch.float32)
    assert t.data_ptr() == values.buffers()[1].address + 4 * 4


def test_list_with_nonzero_first_offset_is_zero_copy():
    values = pa.array(np.arange(10, dtype=np.int32))
    arr = pa.ListArray.from_arrays(pa.array([1, 4, 7], pa.int32()), values)
    t = torchspark.to_tensor(arr)
    check(t, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32), torch.int32)
    assert t.data_ptr() == values.buffers()[1].address + 4


NESTED = [
    ("list<list>", pa.list_(pa.list_(pa.float32()))),
    ("large_list<list>", pa.large_list(pa.list_(pa.float32()))),
    ("fsl<fsl>", pa.list_(pa.list_(pa.float32(), 3), 2)),
    ("list<fsl>", pa.list_(pa.list_(pa.float32(), 3))),
    ("fsl<large_list>", pa.list_(pa.large_list(pa.float32()), 2)),
]


@pytest.mark.parametrize("typ", [n[1] for n in NESTED], ids=[n[0] for n in NESTED])
def test_nested_lists_are_zero_copy(typ):
    data = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3) - 5.5
    arr = pa.array(data.tolist(), type=typ)
    t = torchspark.to_tensor(arr)
    check(t, data, torch.float32)
    assert_zero_copy(t, arr)
    for offset, length in [(1, 2), (3, 1), (0, 4)]:
        sliced = arr.slice(offset, length)
        t = torchspark.to_tensor(sliced)
        check(t, data[offset : offset + length], torch.float32)
        assert_zero_copy(t, sliced)


def test_three_level_nesting():
    data = np.arange(2 * 3 * 2 * 2, dtype=np.int16).reshape(2, 3, 2, 2)
    arr = pa.array(data.tolist(), type=pa.list_(pa.list_(pa.list_(pa.int16(), 2))))
    t = torchspark.to_tensor(arr)
    check(t, data, torch.int16)
    assert_zero_copy(t, arr)


@pytest.mark.parametrize("kind", ["list", "large_list"])
def test_ragged_list_raises_and_mentions_pad(kind):
    typ = pa.list_(pa.float32()) if kind == "list" else pa.large_list(pa.float32())
    arr = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0]], typ)
    with pytest.raises(ValueError, match="pad") as info:
        torchspark.to_tensor(arr)
    assert "row 2" in str(info.value)


def test_ragged_inner_list_raises():
    arr = pa.array([[[1, 2], [3, 4]], [[5, 6], [7]]])
    with pytest.raises(ValueError, match="same length"):
        torchspark.to_tensor(arr)


def test_ragged_list_in_batch_names_column():
    batch = pa.record_batch({"tokens": pa.array([[1, 2], [3]])})
    with pytest.raises(ValueError, match="tokens"):
        torchspark.to_tensors(batch)


def test_list_of_bool_is_copied():
    rows = [[True, False, True], [False, False, True]]
    arr = pa.array(rows)
    t = torchspark.to_tensor(arr)
    check(t, np.array(rows), torch.bool)
    assert_not_aliasing(t, arr.values)


def test_list_of_empty_lists():
    t = torchspark.to_tensor(pa.array([[], [], []], pa.list_(pa.int32())))
    check(t, np.zeros((3, 0), dtype=np.int32), torch.int32)


# ---------------------------------------------------------------------------
# zero and single rows


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
def test_zero_rows_primitive(pa_type, dtype, np_dtype):
    check(torchspark.to_tensor(pa.array([], pa_type)), np.array([], dtype=np_dtype), dtype)
    chunked = pa.chunked_array([], pa_type)
    check(torchspark.to_tensor(chunked), np.array([], dtype=np_dtype), dtype)


def test_zero_rows_lists():
    t = torchspark.to_tensor(pa.array([], pa.list_(pa.float32(), 3)))
    check(t, np.zeros((0, 3), dtype=np.float32), torch.float32)
    t = torchspark.to_tensor(pa.chunked_array([], pa.list_(pa.float32(), 3)))
    check(t, np.zeros((0, 3), dtype=np.float32), torch.float32)
    t = torchspark.to_tensor(pa.array([], pa.list_(pa.float64())))
    assert t.dtype == torch.float64 and t.dim() == 2 and t.shape[0] == 0
    t = torchspark.to_tensor(pa.array([], pa.bool_()))
    check(t, np.array([], dtype=bool), torch.bool)
    t, mask = torchspark.to_tensor(pa.array([], pa.int32()), nulls="mask")
    check(t, np.array([], dtype=np.int32), torch.int32)
    check(mask, np.array([], dtype=bool), torch.bool)


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
def test_single_row(pa_type, dtype, np_dtype):
    arr = pa.array(np.array([3], dtype=np_dtype), type=pa_type)
    t = torchspark.to_tensor(arr)
    check(t, np.array([3], dtype=np_dtype), dtype)
    assert_zero_copy(t, arr)


def test_single_row_list():
    arr = pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32()))
    t = torchspark.to_tensor(arr)
    check(t, np.array([[1.0, 2.0, 3.0]], dtype=np.float32), torch.float32)
    assert_zero_copy(t, arr)


# ---------------------------------------------------------------------------
# dtype=


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
def test_same_dtype_is_still_zero_copy(pa_type, dtype, np_dtype):
    arr = pa.array(sample_values(np_dtype), type=pa_type).slice(2)
    t = torchspark.to_tensor(arr, dtype=dtype)
    check(t, sample_values(np_dtype)[2:], dtype)
    assert_zero_copy(t, arr)


def test_same_dtype_list_is_still_zero_copy():
    arr = pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32()))
    t = torchspark.to_tensor(arr, dtype=torch.float32)
    check(t, np.array([[1, 2], [3, 4]], dtype=np.float32), torch.float32)
    assert_zero_copy(t, arr)


@pytest.mark.parametrize(
    ("values", "pa_type", "dtype", "np_target"),
    [
        ([1, -2, 3, 2**40], pa.int64(), torch.float32, np.float32),
        ([1, -2, 3, 2**40], pa.int64(), torch.float64, np.float64),
        ([0.5, -1.5, 65504.0, 1e-3], pa.float64(), torch.float16, np.float16),
        ([0, 1, 200, 255], pa.uint8(), torch.int64, np.int64),
        ([0, 1, -3, 0], pa.int32(), torch.bool, np.bool_),
        ([True, False, True], pa.bool_(), torch.float32, np.float32),
        ([True, False, True], pa.bool_(), torch.int64, np.int64),
        ([1.5, 2.5, -3.0], pa.float32(), torch.float64, np.float64),
        ([7, 9, 65535], pa.uint16(), torch.int32, np.int32),
    ],
)
def test_dtype_cast_copies(values, pa_type, dtype, np_target):
    arr = pa.array(values, type=pa_type)
    t = torchspark.to_tensor(arr, dtype=dtype)
    expected = arr.to_numpy(zero_copy_only=False).astype(np_target)
    check(t, expected, dtype)
    assert_not_aliasing(t, arr)


def test_dtype_cast_to_bfloat16():
    arr = pa.array([1.0, 2.0, -0.5], pa.float32())
    t = torchspark.to_tensor(arr, dtype=torch.bfloat16)
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), np.array([1.0, 2.0, -0.5], np.float32))


def test_dtype_cast_of_list_and_slice():
    arr = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32())).slice(1)
    t = torchspark.to_tensor(arr, dtype=torch.float64)
    check(t, np.array([[3, 4], [5, 6]], dtype=np.float64), torch.float64)
    assert_not_aliasing(t, arr.values)


def test_unsupported_dtype_raises():
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensor(pa.array([1, 2]), dtype=torch.complex64)


# ---------------------------------------------------------------------------
# nulls


def test_null_errors_are_value_errors():
    assert issubclass(NullValueError, ValueError)
    assert issubclass(NullValueError, torchspark.TorchSparkError)


def test_nulls_raise_by_default_with_count_and_first_row():
    arr = pa.array([1.0, 2.0, None, 4.0, None, None])
    with pytest.raises(NullValueError) as info:
        torchspark.to_tensor(arr)
    message = str(info.value)
    assert "3 null values" in message
    assert "row 2" in message


def test_single_null_message():
    with pytest.raises(NullValueError, match=r"1 null value \(first in row 0\)"):
        torchspark.to_tensor(pa.array([None, 5], pa.int32()))


def test_null_message_names_column():
    batch = pa.record_batch({"x": pa.array([1, 2, 3]), "age": pa.array([1, None, None])})
    with pytest.raises(NullValueError, match="'age'") as info:
        torchspark.to_tensors(batch)
    assert "2 null values (first in row 1)" in str(info.value)


def test_null_first_row_is_relative_to_slice():
    arr = pa.array([None, 1, 2, None, 4])
    with pytest.raises(NullValueError, match=r"1 null value \(first in row 2\)"):
        torchspark.to_tensor(arr.slice(1))
    check(torchspark.to_tensor(arr.slice(1, 2)), np.array([1, 2]), torch.int64)


def test_null_first_row_counts_across_chunks():
    chunked = pa.chunked_array([pa.array([1, 2, 3]), pa.array([4, None, None])])
    with pytest.raises(NullValueError, match=r"first in row 4"):
        torchspark.to_tensor(chunked)


@pytest.mark.parametrize("source", ["chunked_array", "table"])
def test_null_count_in_message_covers_all_chunks(source):
    chunks = [pa.array([1, None], pa.int64()), pa.array([None, None], pa.int64())]
    with pytest.raises(NullValueError, match=r"3 null values \(first in row 1\)"):
        if source == "chunked_array":
            torchspark.to_tensor(pa.chunked_array(chunks))
        else:
            batches = [pa.record_batch({"a": c}) for c in chunks]
            torchspark.to_tensors(pa.Table.from_batches(batches))


@pytest.mark.parametrize(("pa_type", "dtype", "np_dtype"), PRIMITIVES, ids=PRIMITIVE_IDS)
@pytest.mark.parametrize("policy", ["fill", "mask"])
def test_nulls_fill_and_mask(pa_type, dtype, np_dtype, policy):
    values = [1, None, 3, None, 5, 6, None, 8, 9]
    arr = pa.array(values, type=pa_type)
    expected, valid = nulls_reference(values, 7, np_dtype)
    result = torchspark.to_tensor(arr, nulls=policy, fill=7)
    if policy == "mask":
        t, mask = result
        check(mask, valid, torch.bool)
    else:
        t = result
    check(t, expected, dtype)
    assert_not_aliasing(t, arr)


@pytest.mark.parametrize("fill", [True, False])
def test_bool_nulls_fill_and_mask(fill):
    values = [True, None, False, None, True, True, False, None, False]
    arr = pa.array(values).slice(1, 7)
    expected, valid = nulls_reference(values[1:8], fill, bool)
    check(torchspark.to_tensor(arr, nulls="fill", fill=fill), expected, torch.bool)
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=fill)
    check(t, expected, torch.bool)
    check(mask, valid, torch.bool)


def test_mask_without_nulls_is_all_valid():
    arr = pa.array([1.0, 2.0, 3.0], pa.float32())
    t, mask = torchspark.to_tensor(arr, nulls="mask")
    check(t, np.array([1, 2, 3], dtype=np.float32), torch.float32)
    check(mask, np.ones(3, dtype=bool), torch.bool)


def test_default_fill_is_zero():
    check(
        torchspark.to_tensor(pa.array([1.5, None]), nulls="fill"),
        np.array([1.5, 0.0]),
        torch.float64,
    )


def test_fill_nan_with_float_cast():
    arr = pa.array([1, None, 3], pa.int64())
    t = torchspark.to_tensor(arr, dtype=torch.float32, nulls="fill", fill=float("nan"))
    check(t, np.array([1.0, np.nan, 3.0], dtype=np.float32), torch.float32)
    t, mask = torchspark.to_tensor(arr, dtype=torch.float64, nulls="mask", fill=-1)
    check(t, np.array([1.0, -1.0, 3.0]), torch.float64)
    check(mask, np.array([True, False, True]), torch.bool)


def test_nulls_under_sliced_array_with_large_bitmap():
    values = [None if i % 7 == 3 else i for i in range(200)]
    arr = pa.array(values, pa.int32()).slice(13, 150)
    expected, valid = nulls_reference(values[13:163], -1, np.int32)
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-1)
    check(t, expected, torch.int32)
    check(mask, valid, torch.bool)


@pytest.mark.parametrize(
    ("pa_type", "dtype", "fill"),
    [
        (pa.int64(), torch.int64, float("nan")),
        (pa.int32(), torch.int64, float("inf")),
        (pa.float64(), torch.int32, float("nan")),
        (pa.int8(), torch.int8, 300),
        (pa.int64(), torch.uint8, 256),
    ],
    ids=["nan-int64", "inf-int32-to-int64", "nan-float64-to-int32", "300-int8", "256-uint8"],
)
def test_unrepresentable_fill_with_dtype_raises_value_error(pa_type, dtype, fill):
    with pytest.raises(ValueError, match="fill"):
        torchspark.to_tensor(pa.array([1, None, 3], pa_type), nulls="fill", fill=fill, dtype=dtype)


@pytest.mark.parametrize(
    ("pa_type", "fill"),
    [(pa.int64(), float("nan")), (pa.int8(), 300), (pa.uint16(), 70000)],
    ids=["nan-int64", "300-int8", "70000-uint16"],
)
def test_unrepresentable_fill_without_dtype_raises_value_error(pa_type, fill):
    with pytest.raises(ValueError, match="fill"):
        torchspark.to_tensor(pa.array([1, None, 3], pa_type), nulls="fill", fill=fill)


def test_unknown_null_policy_raises():
    with pytest.raises(ValueError, match="nulls"):
        torchspark.to_tensor(pa.array([1, 2]), nulls="drop")


# ---- nulls in lists


@pytest.mark.parametrize("kind", LIST_KINDS)
def test_list_row_nulls(kind):
    rows = [[1.0, 2.0], None, [3.0, 4.0], None, [5.0, 6.0]]
    typ = {
        "list": pa.list_(pa.float32()),
        "large_list": pa.large_list(pa.float32()),
        "fixed_size_list": pa.list_(pa.float32(), 2),
    }[kind]
    arr = pa.array(rows, typ)
    with pytest.raises(NullValueError, match=r"2 null values \(first in row 1\)"):
        torchspark.to_tensor(arr)
    expected, valid = nulls_reference(rows, -9, np.float32, row_size=2)
    check(torchspark.to_tensor(arr, nulls="fill", fill=-9), expected, torch.float32)
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-9)
    check(t, expected, torch.float32)
    check(mask, valid, torch.bool)
    # a slice with no null row is zero-copy again
    check(torchspark.to_tensor(arr.slice(2, 1)), np.array([[3.0, 4.0]], np.float32), torch.float32)
    assert_zero_copy(torchspark.to_tensor(arr.slice(2, 1)), arr.slice(2, 1))


@pytest.mark.parametrize("kind", LIST_KINDS)
def test_list_element_nulls(kind):
    rows = [[1, 2, 3], [4, None, 6], [None, None, 9], [10, 11, 12]]
    typ = {
        "list": pa.list_(pa.int64()),
        "large_list": pa.large_list(pa.int64()),
        "fixed_size_list": pa.list_(pa.int64(), 3),
    }[kind]
    arr = pa.array(rows, typ)
    with pytest.raises(NullValueError, match=r"3 null values \(first in row 1\)"):
        torchspark.to_tensor(arr)
    expected, valid = nulls_reference(rows, 0, np.int64, row_size=3)
    check(torchspark.to_tensor(arr, nulls="fill"), expected, torch.int64)
    t, mask = torchspark.to_tensor(arr, nulls="mask")
    check(t, expected, torch.int64)
    check(mask, valid, torch.bool)
    # slices
    expected, valid = nulls_reference(rows[2:], 5, np.int64, row_size=3)
    t, mask = torchspark.to_tensor(arr.slice(2), nulls="mask", fill=5)
    check(t, expected, torch.int64)
    check(mask, valid, torch.bool)
    with pytest.raises(NullValueError, match=r"first in row 0"):
        torchspark.to_tensor(arr.slice(2))


def test_list_row_and_element_nulls_with_cast():
    rows = [None, [1, None], [3, 4], None, [None, 8]]
    arr = pa.array(rows, pa.list_(pa.int16()))
    expected, valid = nulls_reference(rows, float("nan"), np.float32, row_size=2)
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=float("nan"), dtype=torch.float32)
    check(t, expected, torch.float32)
    check(mask, valid, torch.bool)


def test_null_rows_backed_by_other_lengths_are_not_read():
    # Row 1 is null but its offsets span 3 values: it must not count as ragged.
    values = pa.array([1, 2, 90, 91, 92, 5, 6], pa.int32())
    offsets = pa.array([0, 2, 5, 7], pa.int32())
    arr = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True, False]))
    assert arr.to_pylist() == [[1, 2], None, [5, 6]]
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-1)
    check(t, np.array([[1, 2], [-1, -1], [5, 6]], dtype=np.int32), torch.int32)
    check(mask, np.array([[True, True], [False, False], [True, True]]), torch.bool)


def test_values_under_null_elements_are_not_read():
    # The data under null slots is garbage (nan / large); fill replaces it.
    data = np.array([1.0, np.nan, 3.0, 1e30], dtype=np.float32)
    arr = pa.array(data, mask=np.array([False, True, False, True]))
    check(
        torchspark.to_tensor(arr, nulls="fill", fill=0.25),
        np.array([1.0, 0.25, 3.0, 0.25], dtype=np.float32),
        torch.float32,
    )


def test_nested_list_nulls():
    rows = [[[1, 2], [3, 4]], [[5, None], None], None, [[9, 10], [11, 12]]]
    arr = pa.array(rows, pa.list_(pa.list_(pa.int32())))
    with pytest.raises(NullValueError, match=r"3 null values \(first in row 1\)"):
        torchspark.to_tensor(arr)
    expected = np.array(
        [[[1, 2], [3, 4]], [[5, -1], [-1, -1]], [[-1, -1], [-1, -1]], [[9, 10], [11, 12]]],
        dtype=np.int32,
    )
    valid = expected != -1
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-1)
    check(t, expected, torch.int32)
    check(mask, valid, torch.bool)
    check(torchspark.to_tensor(arr, nulls="fill", fill=-1), expected, torch.int32)
    t = torchspark.to_tensor(arr.slice(3))
    check(t, expected[3:], torch.int32)
    assert_zero_copy(t, arr.slice(3))


# ---------------------------------------------------------------------------
# dictionary-encoded


@pytest.mark.parametrize(
    ("index_type", "dtype", "np_dtype"),
    [
        (pa.int8(), torch.int8, np.int8),
        (pa.int16(), torch.int16, np.int16),
        (pa.int32(), torch.int32, np.int32),
        (pa.int64(), torch.int64, np.int64),
        (pa.uint8(), torch.uint8, np.uint8),
    ],
    ids=str,
)
def test_dictionary_indices_are_zero_copy(index_type, dtype, np_dtype):
    indices = [2, 0, 1, 1, 0, 2]
    arr = pa.DictionaryArray.from_arrays(pa.array(indices, index_type), pa.array([1.5, 2.5, 3.5]))
    t = torchspark.to_tensor(arr)
    check(t, np.array(indices, dtype=np_dtype), dtype)
    assert_zero_copy(t, arr)
    sliced = arr.slice(2, 3)
    t = torchspark.to_tensor(sliced, dictionary="indices")
    check(t, np.array(indices[2:5], dtype=np_dtype), dtype)
    assert_zero_copy(t, sliced)


def test_string_dictionary_indices():
    arr = pa.array(["b", "a", "b", "c"]).dictionary_encode()
    t = torchspark.to_tensor(arr)
    check(t, arr.indices.to_numpy(), torch.int32)
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensor(arr, dictionary="decode")


@pytest.mark.parametrize(
    ("dictionary", "value_type", "dtype", "np_dtype"),
    [
        ([1.5, 2.5, -3.5], pa.float64(), torch.float64, np.float64),
        ([10, 20, 30], pa.int32(), torch.int32, np.int32),
        ([0.25, 1.0, 8.0], pa.float32(), torch.float32, np.float32),
    ],
)
def test_dictionary_decode(dictionary, value_type, dtype, np_dtype):
    indices = [2, 0, 1, 1, 0, 2, 2]
    arr = pa.DictionaryArray.from_arrays(
        pa.array(indices, pa.int8()), pa.array(dictionary, value_type)
    )
    expected = np.array(dictionary, dtype=np_dtype)[indices]
    check(torchspark.to_tensor(arr, dictionary="decode"), expected, dtype)
    check(
        torchspark.to_tensor(arr, dictionary="decode", dtype=torch.float64),
        expected.astype(np.float64),
        torch.float64,
    )
    check(torchspark.to_tensor(arr.slice(3, 3), dictionary="decode"), expected[3:6], dtype)
    np.testing.assert_array_equal(expected, arr.to_numpy(zero_copy_only=False))


def test_dictionary_null_indices():
    indices = pa.array([0, None, 1, None, 1], pa.int16())
    arr = pa.DictionaryArray.from_arrays(indices, pa.array([5.0, 6.0]))
    with pytest.raises(NullValueError, match=r"2 null values \(first in row 1\)"):
        torchspark.to_tensor(arr)
    with pytest.raises(NullValueError, match=r"2 null values \(first in row 1\)"):
        torchspark.to_tensor(arr, dictionary="decode")
    # indices under fill / mask
    check(
        torchspark.to_tensor(arr, nulls="fill", fill=-1),
        np.array([0, -1, 1, -1, 1], np.int16),
        torch.int16,
    )
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-1)
    check(t, np.array([0, -1, 1, -1, 1], np.int16), torch.int16)
    check(mask, np.array([True, False, True, False, True]), torch.bool)
    # decoded under fill / mask
    expected = np.array([5.0, 9.0, 6.0, 9.0, 6.0])
    check(
        torchspark.to_tensor(arr, dictionary="decode", nulls="fill", fill=9),
        expected,
        torch.float64,
    )
    t, mask = torchspark.to_tensor(arr, dictionary="decode", nulls="mask", fill=9)
    check(t, expected, torch.float64)
    check(mask, np.array([True, False, True, False, True]), torch.bool)
    # a slice without the null rows
    check(
        torchspark.to_tensor(arr.slice(2, 1), dictionary="decode"), np.array([6.0]), torch.float64
    )


def test_dictionary_null_values_under_mask():
    arr = pa.DictionaryArray.from_arrays(pa.array([0, 1, 1, 0]), pa.array([1.0, None]))
    t, mask = torchspark.to_tensor(arr, dictionary="decode", nulls="mask", fill=-1)
    check(t, np.array([1.0, -1.0, -1.0, 1.0]), torch.float64)
    check(mask, np.array([True, False, False, True]), torch.bool)


def test_dictionary_decode_null_value_message_counts_column_rows():
    arr = pa.DictionaryArray.from_arrays(pa.array([1, 1, 0]), pa.array([1.0, None]))
    assert arr.to_pylist() == [None, None, 1.0]
    with pytest.raises(NullValueError, match=r"2 null values \(first in row 0\)"):
        torchspark.to_tensor(arr, dictionary="decode")


def test_dictionary_decode_unreferenced_null_entry_is_fine():
    arr = pa.DictionaryArray.from_arrays(pa.array([0, 0]), pa.array([1.0, None]))
    assert arr.to_pylist() == [1.0, 1.0]
    check(torchspark.to_tensor(arr, dictionary="decode"), np.array([1.0, 1.0]), torch.float64)


def test_chunked_dictionary_decode_with_different_dictionaries():
    a = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array([1.0, 2.0]))
    b = pa.DictionaryArray.from_arrays(pa.array([2, 0], pa.int8()), pa.array([7.0, 8.0, 9.0]))
    chunked = pa.chunked_array([a, b])
    expected = np.array([1.0, 2.0, 1.0, 9.0, 7.0])
    check(torchspark.to_tensor(chunked, dictionary="decode"), expected, torch.float64)
    check(torchspark.to_tensor(chunked), np.array([0, 1, 0, 2, 0], np.int8), torch.int8)


def test_unknown_dictionary_policy_raises():
    arr = pa.array(["a", "b"]).dictionary_encode()
    with pytest.raises(ValueError, match="dictionary"):
        torchspark.to_tensor(arr, dictionary="values")


# ---------------------------------------------------------------------------
# binary cells holding tensor bytes

ROWS_2X2 = np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2) * 0.5 - 3.0


@pytest.mark.parametrize(
    "typ", [pa.binary(), pa.large_binary(), pa.binary(16)], ids=["binary", "large_binary", "fsb16"]
)
def test_binary_tensor_bytes_are_zero_copy(typ):
    arr = pa.array([r.tobytes() for r in ROWS_2X2], typ)
    t = torchspark.to_tensor(arr, dtype=torch.float32, shape=(2, 2))
    check(t, ROWS_2X2, torch.float32)
    assert_zero_copy(t, arr)
    t = torchspark.to_tensor(arr, dtype=torch.float32, shape=4)
    check(t, ROWS_2X2.reshape(5, 4), torch.float32)
    t = torchspark.to_tensor(arr, dtype=torch.float32)
    check(t, ROWS_2X2.reshape(5, 4), torch.float32)
    for offset, length in [(1, 3), (4, 1), (2, 3)]:
        sliced = arr.slice(offset, length)
        t = torchspark.to_tensor(sliced, dtype=torch.float32, shape=(2, 2))
        check(t, ROWS_2X2[offset : offset + length], torch.float32)
        assert_zero_copy(t, sliced)


def test_binary_default_dtype_is_uint8():
    rows = [b"abcd", b"efgh", b"ijkl"]
    arr = pa.array(rows)
    t = torchspark.to_tensor(arr)
    check(t, np.frombuffer(b"".join(rows), np.uint8).reshape(3, 4), torch.uint8)
    assert_zero_copy(t, arr)


def test_binary_rows_of_different_lengths_raise():
    arr = pa.array([ROWS_2X2[0].tobytes(), ROWS_2X2[1].tobytes()[:8]])
    with pytest.raises(ValueError, match="row 1"):
        torchspark.to_tensor(arr, dtype=torch.float32)
    with pytest.raises(ValueError):
        torchspark.to_tensor(arr, dtype=torch.float32, shape=(2, 2))


def test_binary_shape_mismatch_raises():
    arr = pa.array([ROWS_2X2[0].tobytes()])
    with pytest.raises(ValueError, match="bytes"):
        torchspark.to_tensor(arr, dtype=torch.float32, shape=(3, 2))


@pytest.mark.parametrize("typ", [pa.binary(), pa.binary(16)], ids=["binary", "fsb16"])
def test_binary_nulls(typ):
    cells = [None, ROWS_2X2[1].tobytes(), None, ROWS_2X2[3].tobytes()]
    arr = pa.array(cells, typ)
    with pytest.raises(NullValueError, match=r"2 null values \(first in row 0\)"):
        torchspark.to_tensor(arr, dtype=torch.float32, shape=(2, 2))
    expected = ROWS_2X2[:4].copy()
    expected[[0, 2]] = -1.0
    valid = np.ones((4, 2, 2), dtype=bool)
    valid[[0, 2]] = False
    t = torchspark.to_tensor(arr, dtype=torch.float32, shape=(2, 2), nulls="fill", fill=-1.0)
    check(t, expected, torch.float32)
    t, mask = torchspark.to_tensor(arr, dtype=torch.float32, shape=(2, 2), nulls="mask", fill=-1)
    check(t, expected, torch.float32)
    check(mask, valid, torch.bool)


def test_misaligned_binary_is_copied_correctly():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    data = pa.py_buffer(b"\x00" + rows.tobytes())
    offsets = pa.py_buffer(np.array([1, 9, 17, 25], dtype=np.int32).tobytes())
    arr = pa.Array.from_buffers(pa.binary(), 3, [None, offsets, data])
    t = torchspark.to_tensor(arr, dtype=torch.float32)
    check(t, rows, torch.float32)
    assert t.data_ptr() % 4 == 0
    assert_not_aliasing(t, arr)


# ---------------------------------------------------------------------------
# chunked arrays


def test_several_chunks_are_concatenated():
    chunks = [
        pa.array([1.0, 2.0], pa.float32()),
        pa.array([3.0], pa.float32()),
        pa.array([4.0, 5.0], pa.float32()),
    ]
    chunked = pa.chunked_array(chunks)
    t = torchspark.to_tensor(chunked)
    check(t, np.array([1, 2, 3, 4, 5], dtype=np.float32), torch.float32)
    assert_not_aliasing(t, chunked)


def test_several_list_chunks_are_concatenated():
    chunked = pa.chunked_array(
        [
            pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())),
            pa.array([[5, 6]], pa.list_(pa.int32())).slice(0),
        ]
    )
    t = torchspark.to_tensor(chunked)
    check(t, np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int32), torch.int32)
    check(t, np.stack(chunked.to_numpy()), torch.int32)


def test_one_chunk_is_zero_copy():
    chunked = pa.chunked_array([pa.array([1.0, 2.0, 3.0]).slice(1)])
    t = torchspark.to_tensor(chunked)
    check(t, np.array([2.0, 3.0]), torch.float64)
    assert_zero_copy(t, chunked)
    lists = pa.chunked_array([pa.array([[1.0], [2.0]], pa.list_(pa.float32()))])
    t = torchspark.to_tensor(lists)
    check(t, np.array([[1.0], [2.0]], np.float32), torch.float32)
    assert_zero_copy(t, lists)


def test_empty_chunks_are_skipped():
    chunked = pa.chunked_array(
        [
            pa.array([], pa.list_(pa.int64())),
            pa.array([[1, 2]], pa.list_(pa.int64())),
            pa.array([], pa.list_(pa.int64())),
            pa.array([[3, 4], [5, 6]], pa.list_(pa.int64())),
        ]
    )
    check(torchspark.to_tensor(chunked), np.array([[1, 2], [3, 4], [5, 6]]), torch.int64)


def test_chunks_with_different_list_widths_raise_naming_the_chunk():
    chunked = pa.chunked_array(
        [
            pa.array([[1.0, 2.0]], pa.list_(pa.float32())),
            pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32())),
        ]
    )
    with pytest.raises(ValueError, match="chunk 1"):
        torchspark.to_tensor(chunked)


def test_chunked_nulls_fill_and_mask():
    chunked = pa.chunked_array([pa.array([1, None, 3]), pa.array([None, 5])])
    expected, valid = nulls_reference([1, None, 3, None, 5], 0, np.int64)
    t, mask = torchspark.to_tensor(chunked, nulls="mask")
    check(t, expected, torch.int64)
    check(mask, valid, torch.bool)
    check(torchspark.to_tensor(chunked, nulls="fill"), expected, torch.int64)


def test_chunked_dtype_cast():
    chunked = pa.chunked_array([pa.array([1, 2], pa.int8()), pa.array([-3], pa.int8())])
    check(
        torchspark.to_tensor(chunked, dtype=torch.float64),
        np.array([1.0, 2.0, -3.0]),
        torch.float64,
    )


def test_chunk_of_all_null_list_rows_is_filled():
    typ = pa.list_(pa.int64())
    one = torchspark.to_tensor(pa.array([[1, 2], None], typ), nulls="fill")
    check(one, np.array([[1, 2], [0, 0]]), torch.int64)
    chunked = pa.chunked_array([pa.array([[1, 2]], typ), pa.array([None], typ)])
    check(torchspark.to_tensor(chunked, nulls="fill"), np.array([[1, 2], [0, 0]]), torch.int64)


# ---------------------------------------------------------------------------
# record batches and tables


def make_batch() -> pa.RecordBatch:
    return pa.record_batch(
        {
            "id": pa.array([10, 11, 12, 13], pa.int64()),
            "features": pa.array(
                [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], pa.list_(pa.float32())
            ),
            "age": pa.array([31.0, 45.0, 27.0, 60.0], pa.float64()),
            "flag": pa.array([True, False, True, True]),
        }
    )


def test_to_tensors_on_record_batch():
    batch = make_batch()
    out = torchspark.to_tensors(batch)
    assert list(out) == ["id", "features", "age", "flag"]
    check(out["id"], np.array([10, 11, 12, 13]), torch.int64)
    check(out["features"], np.arange(1, 9, dtype=np.float32).reshape(4, 2), torch.float32)
    check(out["age"], np.array([31.0, 45.0, 27.0, 60.0]), torch.float64)
    check(out["flag"], np.array([True, False, True, True]), torch.bool)
    assert_zero_copy(out["id"], batch.column("id"))
    assert_zero_copy(out["features"], batch.column("features"))
    assert_zero_copy(out["age"], batch.column("age"))


def test_to_tensors_selects_and_orders_columns():
    out = torchspark.to_tensors(make_batch(), ["age", "id"])
    assert list(out) == ["age", "id"]
    check(out["age"], np.array([31.0, 45.0, 27.0, 60.0]), torch.float64)
    check(out["id"], np.array([10, 11, 12, 13]), torch.int64)
    assert torchspark.to_tensors(make_batch(), []) == {}


def test_to_tensors_on_sliced_batch_is_zero_copy():
    batch = make_batch()
    sliced = batch.slice(1, 2)
    out = torchspark.to_tensors(sliced, ["features", "id"])
    check(out["features"], np.array([[3, 4], [5, 6]], dtype=np.float32), torch.float32)
    check(out["id"], np.array([11, 12]), torch.int64)
    assert_zero_copy(out["features"], sliced.column("features"))
    assert_zero_copy(out["id"], sliced.column("id"))


def test_to_tensors_on_batch_of_sliced_columns():
    # a struct offset on top of the columns' own offsets
    base = pa.array(np.arange(10, dtype=np.int32))
    batch = pa.RecordBatch.from_arrays([base.slice(2, 6)], names=["v"]).slice(1, 3)
    t = torchspark.to_tensors(batch)["v"]
    check(t, np.array([3, 4, 5], dtype=np.int32), torch.int32)
    assert t.data_ptr() == base.buffers()[1].address + 3 * 4


def test_to_tensors_on_table_with_several_batches():
    batch = make_batch()
    table = pa.Table.from_batches([batch, batch.slice(1, 2), batch.slice(4, 0)])
    out = torchspark.to_tensors(table, ["features", "id", "flag"])
    assert list(out) == ["features", "id", "flag"]
    feats = np.arange(1, 9, dtype=np.float32).reshape(4, 2)
    check(out["features"], np.concatenate([feats, feats[1:3]]), torch.float32)
    check(out["id"], np.array([10, 11, 12, 13, 11, 12]), torch.int64)
    check(out["flag"], np.array([True, False, True, True, False, True]), torch.bool)


def test_to_tensors_on_table_with_one_batch_is_zero_copy():
    batch = make_batch()
    table = pa.Table.from_batches([batch])
    out = torchspark.to_tensors(table, ["age"])
    check(out["age"], np.array([31.0, 45.0, 27.0, 60.0]), torch.float64)
    assert_zero_copy(out["age"], batch.column("age"))


def test_to_tensors_options_apply_to_every_column():
    batch = pa.record_batch({"a": pa.array([1, None, 3]), "b": pa.array([0.5, 1.5, None])})
    out = torchspark.to_tensors(batch, nulls="mask", fill=-1, dtype=torch.float32)
    t, mask = out["a"]
    check(t, np.array([1, -1, 3], dtype=np.float32), torch.float32)
    check(mask, np.array([True, False, True]), torch.bool)
    t, mask = out["b"]
    check(t, np.array([0.5, 1.5, -1], dtype=np.float32), torch.float32)
    check(mask, np.array([True, True, False]), torch.bool)
    with pytest.raises(NullValueError, match="'b'"):
        torchspark.to_tensors(batch, ["b"])


def test_to_tensors_unknown_option_raises():
    with pytest.raises(TypeError, match="bogus"):
        torchspark.to_tensors(make_batch(), bogus=1)


def test_missing_column_lists_available_columns():
    with pytest.raises(ValueError, match="nope") as info:
        torchspark.to_tensors(make_batch(), ["id", "nope"])
    message = str(info.value)
    for name in ["id", "features", "age", "flag"]:
        assert f"'{name}'" in message


@pytest.mark.parametrize(
    "make", [make_batch, lambda: pa.Table.from_batches([make_batch()])], ids=["batch", "table"]
)
def test_to_tensor_on_batch_points_to_to_tensors(make):
    with pytest.raises(UnsupportedTypeError) as info:
        torchspark.to_tensor(make())
    message = str(info.value)
    assert "to_tensors" in message
    assert "gather" in message


def test_to_tensors_on_single_array_with_columns_raises():
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensors(pa.array([1, 2]), ["a"])


def test_to_tensors_on_single_array_without_columns_raises():
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensors(pa.array([1, 2]))


@pytest.mark.parametrize(
    "bad",
    [object(), [1.0, 2.0], np.arange(3), 3.5, None],
    ids=["object", "list", "ndarray", "float", "None"],
)
def test_object_without_arrow_protocol_raises_type_error(bad):
    with pytest.raises(TypeError, match="__arrow_c"):
        torchspark.to_tensor(bad)
    with pytest.raises(TypeError):
        torchspark.to_tensors(bad)


def spark_batch(n: int, d: int) -> pa.RecordBatch:
    """The layout of Spark's mapInArrow batches: array<float> as list<element: float not
    null> with int32 offsets."""
    typ = pa.list_(pa.field("element", pa.float32(), nullable=False))
    flat = (np.arange(n * d, dtype=np.float32) * 0.25).astype(np.float32)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    features = pa.ListArray.from_arrays(offsets, pa.array(flat), type=typ)
    return pa.RecordBatch.from_arrays(
        [pa.array(np.arange(n, dtype=np.int64)), features], names=["id", "features"]
    )


def test_spark_style_batch_is_zero_copy():
    batch = spark_batch(50, 8)
    assert str(batch.schema.field("features").type) == "list<element: float not null>"
    assert batch.column("features").offsets.type == pa.int32()
    out = torchspark.to_tensors(batch, ["features"])
    expected = (np.arange(400, dtype=np.float32) * 0.25).reshape(50, 8)
    check(out["features"], expected, torch.float32)
    assert_zero_copy(out["features"], batch.column("features"))
    sliced = batch.slice(7, 20)
    out = torchspark.to_tensors(sliced, ["features", "id"])
    check(out["features"], expected[7:27], torch.float32)
    check(out["id"], np.arange(7, 27), torch.int64)
    assert_zero_copy(out["features"], sliced.column("features"))


# ---------------------------------------------------------------------------
# memory: alignment and lifetime


@pytest.mark.parametrize(
    ("pa_type", "np_dtype", "dtype"),
    [
        (pa.float32(), np.float32, torch.float32),
        (pa.float64(), np.float64, torch.float64),
        (pa.int16(), np.int16, torch.int16),
    ],
    ids=str,
)
def test_misaligned_buffer_is_copied_to_aligned_memory(pa_type, np_dtype, dtype):
    values = np.arange(9, dtype=np_dtype) * 3
    raw = values.tobytes()
    buf = pa.py_buffer(b"\x00" + raw)[1:]
    arr = pa.Array.from_buffers(pa_type, len(values), [None, buf])
    itemsize = np.dtype(np_dtype).itemsize
    assert buf.address % itemsize != 0
    for a, expected in [(arr, values), (arr.slice(2, 5), values[2:7])]:
        t = torchspark.to_tensor(a)
        check(t, expected, dtype)
        assert t.data_ptr() % itemsize == 0
        assert t.data_ptr() != leaf_address(a)
        assert_not_aliasing(t, a)
        t = torchspark.to_tensor(a, dtype=dtype)
        check(t, expected, dtype)
        assert t.data_ptr() % itemsize == 0


def test_misaligned_buffer_with_nulls():
    values = np.arange(8, dtype=np.float64)
    buf = pa.py_buffer(b"\x00" + values.tobytes())[1:]
    valid = np.array([1, 0, 1, 1, 1, 1, 1, 0], dtype=bool)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    arr = pa.Array.from_buffers(pa.float64(), 8, [bitmap, buf], null_count=2)
    t, mask = torchspark.to_tensor(arr, nulls="mask", fill=-1)
    check(t, np.where(valid, values, -1.0), torch.float64)
    check(mask, valid, torch.bool)


@pytest.mark.parametrize("kind", ["list", "fixed_size_list"])
def test_misaligned_list_leaf_is_copied(kind):
    values = np.arange(8, dtype=np.float64) - 2.5
    buf = pa.py_buffer(b"\x00" + values.tobytes())[1:]
    leaf = pa.Array.from_buffers(pa.float64(), 8, [None, buf])
    if kind == "list":
        arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6, 8], pa.int32()), leaf)
    else:
        arr = pa.FixedSizeListArray.from_arrays(leaf, 2)
    t = torchspark.to_tensor(arr)
    check(t, values.reshape(4, 2), torch.float64)
    assert t.data_ptr() % 8 == 0
    assert_not_aliasing(t, leaf)


def test_tensor_keeps_primitive_data_alive():
    arr = pa.array(np.arange(100_000, dtype=np.float64) * 0.5)
    address = leaf_address(arr)
    t = torchspark.to_tensor(arr)
    view = t[10:20]
    del arr
    gc.collect()
    assert t.data_ptr() == address  # still the Arrow buffer, not a copy
    np.testing.assert_array_equal(t.numpy(), np.arange(100_000, dtype=np.float64) * 0.5)
    del t
    gc.collect()
    np.testing.assert_array_equal(view.numpy(), np.arange(10, 20, dtype=np.float64) * 0.5)


def test_tensor_keeps_list_batch_and_binary_data_alive():
    batch = spark_batch(1000, 4)
    feats = torchspark.to_tensors(batch.slice(10), ["features"])["features"]
    rows = pa.array([r.tobytes() for r in ROWS_2X2], pa.binary(16))
    cells = torchspark.to_tensor(rows, dtype=torch.float32, shape=(2, 2))
    chunked = pa.chunked_array([pa.array(np.arange(1000, dtype=np.int32))])
    ints = torchspark.to_tensor(chunked)
    dictionary = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, 1], pa.int32()), pa.array([0.5, 1.5])
    )
    indices = torchspark.to_tensor(dictionary)
    del batch, rows, chunked, dictionary
    gc.collect()
    expected = (np.arange(4000, dtype=np.float32) * 0.25).reshape(1000, 4)[10:]
    np.testing.assert_array_equal(feats.numpy(), expected)
    np.testing.assert_array_equal(cells.numpy(), ROWS_2X2)
    np.testing.assert_array_equal(ints.numpy(), np.arange(1000, dtype=np.int32))
    np.testing.assert_array_equal(indices.numpy(), np.array([1, 0, 1], dtype=np.int32))


# ---------------------------------------------------------------------------
# non-pyarrow producers


def test_polars_series():
    pl = pytest.importorskip("polars")
    check(
        torchspark.to_tensor(pl.Series("v", [1.5, 2.5, -3.0])),
        np.array([1.5, 2.5, -3.0]),
        torch.float64,
    )
    check(
        torchspark.to_tensor(pl.Series("v", [1, 2, 3], dtype=pl.Int16).slice(1)),
        np.array([2, 3], np.int16),
        torch.int16,
    )
    t, mask = torchspark.to_tensor(pl.Series("v", [1, None, 3]), nulls="mask", fill=-5)
    check(t, np.array([1, -5, 3]), torch.int64)
    check(mask, np.array([True, False, True]), torch.bool)
    with pytest.raises(NullValueError, match="row 1"):
        torchspark.to_tensor(pl.Series("v", [1, None, 3]))
    t, mask = torchspark.to_tensor(pl.Series("v", [True, None, False]), nulls="mask")
    check(t, np.array([True, False, False]), torch.bool)
    check(mask, np.array([True, False, True]), torch.bool)


def test_polars_lists_arrays_and_chunks():
    pl = pytest.importorskip("polars")
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    check(torchspark.to_tensor(pl.Series("v", rows)), np.array(rows), torch.float64)
    fixed = pl.Series("v", rows, dtype=pl.Array(pl.Float32, 2))
    check(torchspark.to_tensor(fixed), np.array(rows, np.float32), torch.float32)
    chunked = pl.concat([pl.Series("v", [1, 2]), pl.Series("v", [3])], rechunk=False)
    assert chunked.n_chunks() == 2
    check(torchspark.to_tensor(chunked), np.array([1, 2, 3]), torch.int64)
    with pytest.raises(UnsupportedTypeError):
        torchspark.to_tensor(pl.Series("v", ["a", "b"]))


def test_polars_dataframe():
    pl = pytest.importorskip("polars")
    df = pl.DataFrame({"a": [1, 2], "b": [[1.0, 2.0], [3.0, 4.0]], "c": [0.5, 0.25]})
    out = torchspark.to_tensors(df, ["c", "b"])
    assert list(out) == ["c", "b"]
    check(out["c"], np.array([0.5, 0.25]), torch.float64)
    check(out["b"], np.array([[1.0, 2.0], [3.0, 4.0]]), torch.float64)


def test_nanoarrow_arrays():
    na = pytest.importorskip("nanoarrow")
    check(
        torchspark.to_tensor(na.c_array([1, 2, 3], na.int32())),
        np.array([1, 2, 3], np.int32),
        torch.int32,
    )
    check(
        torchspark.to_tensor(na.Array([1.5, 2.5], na.float32())),
        np.array([1.5, 2.5], np.float32),
        torch.float32,
    )
    t, mask = torchspark.to_tensor(na.c_array([1, None, 3], na.int64()), nulls="mask", fill=-1)
    check(t, np.array([1, -1, 3]), torch.int64)
    check(mask, np.array([True, False, True]), torch.bool)
    with pytest.raises(NullValueError, match=r"1 null value \(first in row 1\)"):
        torchspark.to_tensor(na.c_array([1, None, 3], na.int64()))
    lists = na.Array(pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())))
    check(torchspark.to_tensor(lists), np.array([[1, 2], [3, 4]], np.int32), torch.int32)


def test_nanoarrow_zero_copy_of_pyarrow_buffers():
    na = pytest.importorskip("nanoarrow")
    arr = pa.array(np.arange(16, dtype=np.float32)).slice(3, 8)
    t = torchspark.to_tensor(na.Array(arr))
    check(t, np.arange(3, 11, dtype=np.float32), torch.float32)
    assert_zero_copy(t, arr)


def test_nanoarrow_stream():
    na = pytest.importorskip("nanoarrow")
    stream = na.ArrayStream(pa.chunked_array([pa.array([1, 2]), pa.array([3])]))
    check(torchspark.to_tensor(stream), np.array([1, 2, 3]), torch.int64)


def test_nanoarrow_multi_chunk_array():
    na = pytest.importorskip("nanoarrow")
    arr = na.Array(pa.chunked_array([pa.array([1, 2]), pa.array([3])]))
    check(torchspark.to_tensor(arr), np.array([1, 2, 3]), torch.int64)


@pytest.mark.parametrize(
    ("arrow_type", "fill", "dtype_name"),
    [
        (pa.uint8(), -1, "Byte"),
        (pa.int8(), 1.5, "Char"),
        (pa.int8(), 300, "Char"),
        (pa.int64(), float("inf"), "Long"),
        (pa.bool_(), 2, "Bool"),
    ],
)
def test_fill_must_be_exactly_representable(arrow_type, fill, dtype_name):
    col = pa.array([1, None], arrow_type) if arrow_type != pa.bool_() else pa.array([True, None])
    with pytest.raises(ValueError, match=f"fill {fill!s}.* cannot be represented as {dtype_name}"):
        torchspark.to_tensor(col, nulls="fill", fill=fill)


def test_exact_fills_are_accepted():
    got = torchspark.to_tensor(pa.array([1, None], pa.uint8()), nulls="fill", fill=255.0)
    assert got.tolist() == [1, 255] and got.dtype == torch.uint8
    got = torchspark.to_tensor(pa.array([True, None]), nulls="fill", fill=1)
    assert got.tolist() == [True, True]


def test_shape_applies_to_binary_only():
    with pytest.raises(ValueError, match=r"shape= applies to binary and fixed_size_binary"):
        torchspark.to_tensor(pa.array([1.0, 2.0]), shape=(1,))
