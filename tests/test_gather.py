"""torchspark.gather: scalar columns -> row-major [N, F], checked against numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark

NUMERIC = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
]


def reference(batch: pa.RecordBatch, columns: list[str], dtype: np.dtype) -> np.ndarray:
    """What a user would compute with numpy: column by column, then stack."""
    if not columns:
        return np.empty((batch.num_rows, 0), dtype=dtype)
    return np.stack(
        [batch.column(c).to_numpy(zero_copy_only=False).astype(dtype) for c in columns], axis=1
    )


def random_batch(rng: np.random.Generator, n: int, types: list[pa.DataType]) -> pa.RecordBatch:
    arrays = {}
    for i, t in enumerate(types):
        if t == pa.bool_():
            arrays[f"c{i}"] = pa.array(rng.integers(0, 2, n).astype(bool))
        elif pa.types.is_floating(t):
            arrays[f"c{i}"] = pa.array(rng.standard_normal(n).astype(t.to_pandas_dtype()), t)
        else:
            info = np.iinfo(t.to_pandas_dtype())
            lo, hi = max(info.min, -1000), min(info.max, 1000)
            arrays[f"c{i}"] = pa.array(rng.integers(lo, hi, n).astype(t.to_pandas_dtype()), t)
    return pa.record_batch(arrays)


def test_float32_columns_match_numpy(rng):
    batch = random_batch(rng, 1000, [pa.float32()] * 7)
    got = torchspark.gather(batch)
    assert got.dtype == torch.float32 and got.shape == (1000, 7) and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), reference(batch, batch.schema.names, np.float32))


@pytest.mark.parametrize("source", [*NUMERIC, pa.bool_()], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.float16])
def test_every_source_type_with_fused_cast(rng, source, dtype):
    batch = random_batch(rng, 257, [source, pa.float32(), source])
    got = torchspark.gather(batch, dtype=dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    expected = reference(batch, batch.schema.names, np.float64).astype(np_dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), expected)


def test_bfloat16_output(rng):
    batch = random_batch(rng, 100, [pa.float32(), pa.float64()])
    got = torchspark.gather(batch, dtype=torch.bfloat16)
    expected = torch.from_numpy(reference(batch, batch.schema.names, np.float32)).bfloat16()
    assert torch.equal(got, expected)


def test_column_selection_and_order(rng):
    batch = random_batch(rng, 50, [pa.float32(), pa.int32(), pa.float64()])
    got = torchspark.gather(batch, ["c2", "c0"])
    np.testing.assert_array_equal(got.numpy(), reference(batch, ["c2", "c0"], np.float32))
    # A column may repeat.
    got = torchspark.gather(batch, ["c1", "c1"])
    np.testing.assert_array_equal(got.numpy(), reference(batch, ["c1", "c1"], np.float32))


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 100_003])
def test_row_counts_across_tile_and_thread_boundaries(rng, n):
    batch = random_batch(rng, n, [pa.float32()] * 5 + [pa.int16()])
    got = torchspark.gather(batch)
    assert got.shape == (n, 6)
    np.testing.assert_array_equal(got.numpy(), reference(batch, batch.schema.names, np.float32))


def test_large_multithreaded_matches_single_thread(rng):
    batch = random_batch(rng, 300_000, [pa.float32()] * 16)
    expected = reference(batch, batch.schema.names, np.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torchspark.gather(batch)
    finally:
        torch.set_num_threads(threads)
    multi = torchspark.gather(batch)
    np.testing.assert_array_equal(single.numpy(), expected)
    np.testing.assert_array_equal(multi.numpy(), expected)


def test_sliced_batch(rng):
    batch = random_batch(rng, 500, [pa.float32(), pa.int64(), pa.bool_()]).slice(37, 301)
    got = torchspark.gather(batch, dtype=torch.float64)
    np.testing.assert_array_equal(got.numpy(), reference(batch, batch.schema.names, np.float64))


def test_table_with_several_batches(rng):
    parts = [random_batch(rng, n, [pa.float32(), pa.int32()]) for n in (10, 0, 33, 1)]
    table = pa.Table.from_batches(parts)
    got = torchspark.gather(table)
    expected = np.concatenate([reference(b, ["c0", "c1"], np.float32) for b in parts])
    np.testing.assert_array_equal(got.numpy(), expected)


def test_into_out_buffer(rng):
    batch = random_batch(rng, 200, [pa.float64()] * 3)
    out = torch.full((200, 3), -1.0)
    got = torchspark.gather(batch, out=out)
    assert got.data_ptr() == out.data_ptr()
    np.testing.assert_array_equal(out.numpy(), reference(batch, batch.schema.names, np.float32))
    # dtype follows out when not given.
    out64 = torch.empty((200, 3), dtype=torch.float64)
    torchspark.gather(batch, out=out64)
    np.testing.assert_array_equal(out64.numpy(), reference(batch, batch.schema.names, np.float64))


@pytest.mark.parametrize(
    "out",
    [
        torch.empty(10, 2),  # wrong rows
        torch.empty(20, 3),  # wrong columns
        torch.empty(20, 2, dtype=torch.float64),  # dtype differs from the requested float32
        torch.empty(2, 20).t(),  # not contiguous
    ],
    ids=["rows", "cols", "dtype", "noncontiguous"],
)
def test_bad_out_is_rejected(out):
    batch = pa.record_batch({"a": np.arange(20.0), "b": np.arange(20.0)})
    with pytest.raises(ValueError, match=r"out must be a contiguous CPU Float tensor of shape"):
        torchspark.gather(batch, dtype=torch.float32, out=out)


def test_nulls_error_names_column_count_and_first_row():
    batch = pa.record_batch({"ok": [1.0, 2.0, 3.0, 4.0], "bad": [1.0, None, 3.0, None]})
    with pytest.raises(torchspark.NullValueError, match=r"column 'bad': 2 null values.*row 1"):
        torchspark.gather(batch)


def test_nulls_fill(rng):
    values = rng.standard_normal(1000)
    mask = rng.random(1000) < 0.3
    batch = pa.record_batch(
        {"x": pa.array(values, mask=mask), "i": pa.array(np.arange(1000), mask=mask[::-1])}
    )
    got = torchspark.gather(batch, nulls="fill", fill=-7, dtype=torch.float64)
    expected = np.stack([np.where(mask, -7, values), np.where(mask[::-1], -7, np.arange(1000))], 1)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_values_under_nulls_are_never_read():
    # NaN under the null slots: an int64 gather must not convert them (that
    # would be undefined behaviour), it writes the fill instead.
    data = np.array([1.5, np.nan, 2.5, np.inf], dtype=np.float64)
    validity = pa.array([True, False, True, False]).buffers()[1]
    col = pa.Array.from_buffers(pa.float64(), 4, [validity, pa.py_buffer(data)], null_count=2)
    got = torchspark.gather(pa.record_batch({"x": col}), nulls="fill", fill=0, dtype=torch.int64)
    assert got.flatten().tolist() == [1, 0, 2, 0]


def test_mask_policy_is_rejected():
    batch = pa.record_batch({"a": [1.0]})
    with pytest.raises(ValueError, match="nulls must be 'error' or 'fill'"):
        torchspark.gather(batch, nulls="mask")


def test_bad_null_policy_lists_allowed_values():
    with pytest.raises(ValueError, match="expected one of 'error', 'fill', 'mask', got 'zero'"):
        torchspark.gather(pa.record_batch({"a": [1.0]}), nulls="zero")


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        (pa.array([[1.0], [2.0]]), "list"),
        (pa.array(["a", "b"]), "utf8"),
        (pa.array(["a", "b"]).dictionary_encode(), "dictionary"),
    ],
)
def test_non_scalar_columns_are_rejected(column, kind):
    batch = pa.record_batch({"x": [1.0, 2.0], "bad": column})
    with pytest.raises(torchspark.UnsupportedTypeError, match=f"column 'bad'.*{kind}"):
        torchspark.gather(batch)


def test_missing_column_lists_available():
    batch = pa.record_batch({"a": [1.0], "b": [2.0]})
    with pytest.raises(ValueError, match=r"column 'z' not found.*\['a', 'b'\]"):
        torchspark.gather(batch, ["a", "z"])


def test_unaligned_column_buffer():
    raw = np.arange(101, dtype=np.float32).tobytes()
    buf = pa.py_buffer(b"\x00" + raw)[1:]  # deliberately 1 byte off alignment
    col = pa.Array.from_buffers(pa.float32(), 101, [None, buf])
    batch = pa.record_batch({"u": col, "v": pa.array(np.ones(101, dtype=np.float32))})
    got = torchspark.gather(batch)
    np.testing.assert_array_equal(got[:, 0].numpy(), np.arange(101, dtype=np.float32))


def test_zero_columns(rng):
    batch = random_batch(rng, 5, [pa.float32()])
    assert torchspark.gather(batch, []).shape == (5, 0)


@pytest.mark.parametrize(
    "types",
    [
        [pa.float32()] * 32,  # streamed from registers, 16 columns per cache line
        [pa.float32()] * 6 + [pa.float64()],  # streamed through a scratch tile
        [pa.int32()] * 16 + [pa.float32()] * 3,  # register blocks + scalar tail, scratch
    ],
    ids=["direct", "scratch", "mixed"],
)
def test_large_outputs_use_streaming_paths(rng, types):
    # >= 8 MiB of output: the non-temporal store paths.
    n = 400_000
    batch = random_batch(rng, n, types)
    got = torchspark.gather(batch)
    assert got.nbytes >= 8 << 20
    np.testing.assert_array_equal(got.numpy(), reference(batch, batch.schema.names, np.float32))
    sliced = batch.slice(3, n - 10)  # unaligned starts in every column
    np.testing.assert_array_equal(
        torchspark.gather(sliced).numpy(), reference(sliced, sliced.schema.names, np.float32)
    )


def test_large_output_with_nulls_filled(rng):
    n = 300_000
    values = rng.standard_normal((n, 16)).astype(np.float32)
    mask = rng.random(n) < 0.1
    arrays = {f"c{j}": pa.array(values[:, j]) for j in range(16)}
    arrays["c5"] = pa.array(values[:, 5], mask=mask)
    got = torchspark.gather(pa.record_batch(arrays), nulls="fill", fill=-1.0)
    expected = values.copy()
    expected[mask, 5] = -1.0
    np.testing.assert_array_equal(got.numpy(), expected)
