"""torchspark.pad: ragged lists -> right-padded [N, L] + lengths, checked against Python."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark


def reference(rows, pad_value, max_len=None):
    """Independent reference: pad Python lists row by row."""
    kept = [[] if r is None else list(r)[:max_len] for r in rows]
    width = max((len(r) for r in kept), default=0)
    values = [r + [pad_value] * (width - len(r)) for r in kept]
    return values, [len(r) for r in kept]


def random_rows(rng, n, max_len=20):
    return [rng.integers(0, 30000, rng.integers(0, max_len + 1)).tolist() for _ in range(n)]


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
@pytest.mark.parametrize("value_type", [pa.int32(), pa.int64(), pa.int16(), pa.float32()])
def test_matches_reference(rng, list_type, value_type):
    rows = random_rows(rng, 500)
    col = pa.array(rows, list_type(value_type))
    values, lengths = torchspark.pad(col, pad_value=-1)
    ref_values, ref_lengths = reference(rows, -1)
    assert values.dtype == torch.from_numpy(np.zeros(0, value_type.to_pandas_dtype())).dtype
    assert values.tolist() == ref_values
    assert lengths.dtype == torch.int64 and lengths.tolist() == ref_lengths


@pytest.mark.parametrize("max_len", [0, 1, 5, 100])
def test_max_len_truncates(rng, max_len):
    rows = random_rows(rng, 300)
    values, lengths = torchspark.pad(pa.array(rows), max_len=max_len)
    ref_values, ref_lengths = reference(rows, 0, max_len)
    assert values.shape == (300, len(ref_values[0]))
    assert values.tolist() == ref_values and lengths.tolist() == ref_lengths


def test_dtype_cast_and_float_pad(rng):
    rows = random_rows(rng, 50)
    values, _ = torchspark.pad(pa.array(rows), dtype=torch.float32, pad_value=0.5)
    assert values.dtype == torch.float32
    assert values.tolist() == reference(rows, 0.5)[0]


def test_sliced_and_chunked(rng):
    rows = random_rows(rng, 400)
    col = pa.array(rows).slice(17, 250)
    values, lengths = torchspark.pad(col)
    ref_values, ref_lengths = reference(rows[17:267], 0)
    assert values.tolist() == ref_values and lengths.tolist() == ref_lengths

    chunked = pa.chunked_array(
        [pa.array(rows[:100]), pa.array([], pa.list_(pa.int64())), pa.array(rows[100:])]
    )
    values, lengths = torchspark.pad(chunked, pad_value=7)
    ref_values, ref_lengths = reference(rows, 7)
    assert values.tolist() == ref_values and lengths.tolist() == ref_lengths


def test_child_with_offset():
    # A list whose values array is itself a slice: offsets index into the slice.
    values = pa.array(np.arange(100, dtype=np.int32)).slice(10)
    col = pa.ListArray.from_arrays(pa.array([0, 3, 3, 8], pa.int32()), values)
    got, lengths = torchspark.pad(col, pad_value=-1)
    assert lengths.tolist() == [3, 0, 5]
    assert got.tolist() == [[10, 11, 12, -1, -1], [-1] * 5, [13, 14, 15, 16, 17]]


def test_fixed_size_list_pads_nothing():
    col = pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2))
    values, lengths = torchspark.pad(col)
    assert values.tolist() == [[1, 2], [3, 4]] and lengths.tolist() == [2, 2]


def test_large_input_multithreaded(rng):
    lengths = rng.integers(1, 129, 200_000)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = rng.integers(0, 50000, offsets[-1]).astype(np.int32)
    col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    values, got_lengths = torchspark.pad(col, pad_value=-1)
    expected = np.full((200_000, lengths.max()), -1, dtype=np.int32)
    mask = np.arange(lengths.max())[None, :] < lengths[:, None]
    expected[mask] = flat
    np.testing.assert_array_equal(values.numpy(), expected)
    np.testing.assert_array_equal(got_lengths.numpy(), lengths)


def test_empty_inputs():
    values, lengths = torchspark.pad(pa.array([], pa.list_(pa.int32())))
    assert values.shape == (0, 0) and lengths.shape == (0,)
    values, lengths = torchspark.pad(pa.array([[], []], pa.list_(pa.int32())))
    assert values.shape == (2, 0) and lengths.tolist() == [0, 0]
    empty_stream = pa.chunked_array([], pa.list_(pa.int16()))
    values, lengths = torchspark.pad(empty_stream)
    assert values.shape == (0, 0) and values.dtype == torch.int16


def test_null_rows_error_by_default():
    col = pa.array([[1, 2], None, [3], None])
    with pytest.raises(torchspark.NullValueError, match=r"2 null rows \(first is row 1\)"):
        torchspark.pad(col)


def test_null_rows_and_elements_fill():
    col = pa.array([[1, None, 2], None, [3]])
    values, lengths = torchspark.pad(col, nulls="fill", pad_value=-9)
    assert values.tolist() == [[1, -9, 2], [-9, -9, -9], [3, -9, -9]]
    assert lengths.tolist() == [3, 0, 1]


def test_null_elements_error_names_row_and_position():
    col = pa.array([[1, 2], [3, None, 4]])
    with pytest.raises(
        torchspark.NullValueError, match=r"null values in row 1 \(first at position 1\)"
    ):
        torchspark.pad(col)


def test_bad_arguments():
    col = pa.array([[1, 2]])
    with pytest.raises(ValueError, match="max_len must be >= 0, got -1"):
        torchspark.pad(col, max_len=-1)
    with pytest.raises(ValueError, match="nulls='error' or 'fill', got 'mask'"):
        torchspark.pad(col, nulls="mask")
    with pytest.raises(ValueError, match=r"pad_value .* cannot be represented as Long"):
        torchspark.pad(col, pad_value=float("nan"))
    with pytest.raises(TypeError, match="pad_value: expected a bool, int or float"):
        torchspark.pad(col, pad_value="x")


@pytest.mark.parametrize(
    ("col", "match"),
    [
        (pa.array([1, 2]), "pad takes a list, large_list or fixed_size_list column, got int64"),
        (pa.array([["a"], ["b"]]), r"list values\): Arrow type utf8 string .* is not supported"),
        (pa.record_batch({"a": [[1]]}), "expected a single column"),
    ],
)
def test_unsupported_inputs(col, match):
    with pytest.raises(torchspark.UnsupportedTypeError, match=match):
        torchspark.pad(col)
