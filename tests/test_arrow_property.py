"""Property tests of torchspark.to_tensor against a numpy reference computed here.

Arrays of every supported primitive type (and bool) and list / large_list /
fixed_size_list columns are generated with random values, random nulls (row and
element level), a random slice and a random split into chunks. The result under each
null policy is compared with a reference built from the generating numpy arrays: values
where valid, ``fill`` where null, ``mask = ~is_null``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import torchspark
from torchspark import NullValueError

# (arrow type, torch dtype, numpy dtype, fill values representable in the type)
TYPES = [
    (pa.int8(), torch.int8, np.int8, [0, -1, 127, -128]),
    (pa.int16(), torch.int16, np.int16, [0, -7, 32767]),
    (pa.int32(), torch.int32, np.int32, [0, -1, 2**31 - 1]),
    (pa.int64(), torch.int64, np.int64, [0, -1, 2**63 - 1, -(2**63)]),
    (pa.uint8(), torch.uint8, np.uint8, [0, 1, 255]),
    (pa.uint16(), torch.uint16, np.uint16, [0, 9, 65535]),
    (pa.uint32(), torch.uint32, np.uint32, [0, 3, 2**32 - 1]),
    (pa.uint64(), torch.uint64, np.uint64, [0, 5, 2**64 - 1]),
    (pa.float16(), torch.float16, np.float16, [0.0, -1.5, float("nan"), float("inf")]),
    (pa.float32(), torch.float32, np.float32, [0.0, 0.25, float("nan"), float("-inf")]),
    (pa.float64(), torch.float64, np.float64, [0.0, -2.5, float("nan"), 1e300]),
    (pa.bool_(), torch.bool, np.bool_, [False, True]),
]
TYPE_IDS = [str(t[0]) for t in TYPES]

POLICIES = ["error", "fill", "mask"]

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def leaf_address(arr: pa.Array) -> int:
    """The address of the first leaf value of a null-free (possibly sliced) array."""
    typ = arr.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return leaf_address(arr.values.slice(arr.offsets[0].as_py()))
    if pa.types.is_fixed_size_list(typ):
        return leaf_address(arr.values.slice(arr.offset * typ.list_size))
    return arr.buffers()[1].address + arr.offset * (typ.bit_width // 8)


def check(t, expected: np.ndarray, dtype: torch.dtype) -> None:
    assert isinstance(t, torch.Tensor), type(t)
    assert t.dtype == dtype, (t.dtype, dtype)
    assert tuple(t.shape) == expected.shape, (tuple(t.shape), expected.shape)
    got = t.numpy()
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    np.testing.assert_array_equal(got, expected)


def values_strategy(np_dtype, n: int):
    # fill=nothing(): every element is drawn (no run of one repeated value)
    return hnp.arrays(np.dtype(np_dtype), n, fill=st.nothing())


def nulls_strategy(n: int):
    """None (no validity bitmap), or a bool array with True = null: none, sparse, about
    half, or all of the slots null."""
    return st.one_of(
        st.none(),
        st.just(np.zeros(n, dtype=bool)),
        hnp.arrays(np.bool_, n, elements=st.sampled_from([False] * 5 + [True]), fill=st.nothing()),
        hnp.arrays(np.bool_, n, elements=st.booleans(), fill=st.nothing()),
        st.just(np.ones(n, dtype=bool)),
    )


@st.composite
def slice_of(draw, n: int) -> tuple[int, int]:
    """(offset, length) of a random slice of n rows, biased towards long slices (hypothesis
    favours small integers, so the drawn numbers are what is cut off)."""
    offset = draw(st.integers(0, n))
    length = n - offset - draw(st.integers(0, n - offset))
    return offset, length


@st.composite
def split(draw, length: int) -> list[tuple[int, int]]:
    """A random split of [0, length) into (start, stop) pieces, empty pieces allowed."""
    if not draw(st.booleans()):
        return [(0, length)]
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=4)))
    bounds = [0, *cuts, length]
    return list(itertools.pairwise(bounds))


def chunk(arr: pa.Array, pieces: list[tuple[int, int]]):
    if len(pieces) == 1 and pieces[0] == (0, len(arr)):
        return arr
    return pa.chunked_array([arr.slice(a, b - a) for a, b in pieces], type=arr.type)


def null_error_expectation(null_rows: np.ndarray, null_counts: np.ndarray) -> tuple[int, int]:
    """(total nulls, first row with a null) for per-row null indicators/counts."""
    rows = np.flatnonzero(null_rows)
    return int(null_counts.sum()), int(rows[0])


def describe(case, nulls: np.ndarray) -> None:
    """Hypothesis statistics: which paths the examples exercised."""
    column = case["column"]
    chunks = column.num_chunks if isinstance(column, pa.ChunkedArray) else 0
    event(f"policy={case['policy']}")
    event(f"chunks={min(chunks, 3)}{'+' if chunks > 3 else ''}")
    event("has nulls" if nulls.any() else "no nulls")
    event(f"rows={min(len(nulls), 4)}")


def check_null_error(info, total: int, first_row: int, chunked: bool) -> None:
    message = str(info.value)
    assert f"(first in row {first_row})" in message, message
    if not chunked:  # (chunked: the count is the first bad chunk's, a known bug)
        noun = "null value" if total == 1 else "null values"
        assert f"{total} {noun} (first" in message, message


# ---------------------------------------------------------------------------
# primitives and bool


@st.composite
def primitive_case(draw, index: int, policy: str):
    pa_type, dtype, np_dtype, fills = TYPES[index]
    n = draw(st.integers(0, 80) | st.integers(10, 80))
    values = draw(values_strategy(np_dtype, n))
    nulls = draw(nulls_strategy(n))
    base = pa.array(values, type=pa_type, mask=nulls)
    offset, length = draw(slice_of(n))
    arr = base.slice(offset, length)
    pieces = draw(split(length))
    ref_values = values[offset : offset + length]
    ref_nulls = (
        np.zeros(length, dtype=bool) if nulls is None else nulls[offset : offset + length].copy()
    )
    return {
        "column": chunk(arr, pieces),
        "arr": arr,
        "values": ref_values,
        "nulls": ref_nulls,
        "fill": draw(st.sampled_from(fills)),
        "policy": policy,
        "cast": draw(st.sampled_from([None, "same", "float64"])),
        "dtype": dtype,
        "np_dtype": np_dtype,
        "pieces": pieces,
    }


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("index", range(len(TYPES)), ids=TYPE_IDS)
@SETTINGS
@given(data=st.data())
def test_primitive_matches_numpy_reference(index, policy, data):
    case = data.draw(primitive_case(index, policy))
    # pyarrow's own view of the nulls agrees with the generating mask
    np.testing.assert_array_equal(
        np.asarray(case["arr"].is_null(), dtype=bool), case["nulls"], strict=True
    )

    dtype, np_dtype = case["dtype"], case["np_dtype"]
    kwargs = {}
    if case["cast"] == "same":
        kwargs["dtype"] = dtype
    elif case["cast"] == "float64":
        kwargs["dtype"] = torch.float64
        dtype, np_dtype = torch.float64, np.float64

    nulls = case["nulls"]
    describe(case, nulls)
    expected = case["values"].astype(np_dtype)
    expected[nulls] = case["fill"]
    policy = case["policy"]
    chunked = isinstance(case["column"], pa.ChunkedArray) and case["column"].num_chunks > 1

    if policy == "error":
        if nulls.any():
            with pytest.raises(NullValueError) as info:
                torchspark.to_tensor(case["column"], **kwargs)
            total, first = null_error_expectation(nulls, nulls.astype(int))
            check_null_error(info, total, first, chunked)
            return
        t = torchspark.to_tensor(case["column"], **kwargs)
        check(t, expected, dtype)
        if (
            not chunked
            and len(expected)
            and case["dtype"] != torch.bool
            and case["cast"] != "float64"
        ):
            assert t.data_ptr() == leaf_address(case["arr"]), "expected a zero-copy view"
            event("zero-copy checked")
        return

    result = torchspark.to_tensor(case["column"], nulls=policy, fill=case["fill"], **kwargs)
    if policy == "mask":
        t, mask = result
        check(mask, ~nulls, torch.bool)
    else:
        t = result
    check(t, expected, dtype)


# ---------------------------------------------------------------------------
# list<T>, large_list<T>, fixed_size_list<T>[D]

LIST_VALUE_TYPES = [0, 2, 3, 4, 6, 8, 9, 10, 11]  # indices into TYPES


@st.composite
def list_case(draw, policy: str):
    kind = draw(st.sampled_from(["list", "large_list", "fixed_size_list"]))
    pa_type, dtype, np_dtype, fills = TYPES[draw(st.sampled_from(LIST_VALUE_TYPES))]
    n = draw(st.integers(0, 25) | st.integers(5, 25))
    width = draw(st.integers(1 if kind == "fixed_size_list" else 0, 4))
    row_nulls = draw(nulls_strategy(n))
    row_null = np.zeros(n, dtype=bool) if row_nulls is None else row_nulls

    # Row lengths: valid rows have `width` values; a null row of a variable-size list
    # may be backed by 0 values or by `width` (never read either way).
    if kind == "fixed_size_list":
        lengths = np.full(n, width)
    else:
        backed = draw(hnp.arrays(np.bool_, n))
        lengths = np.where(row_null & ~backed, 0, width)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(starts[-1])

    pad = draw(st.integers(0, 3))  # the child array itself starts at an offset
    child_values = draw(values_strategy(np_dtype, total + pad))
    elem_nulls = draw(nulls_strategy(total + pad))
    child = pa.array(child_values, type=pa_type, mask=elem_nulls).slice(pad)
    child_values = child_values[pad:]
    elem_null = np.zeros(total, dtype=bool) if elem_nulls is None else elem_nulls[pad:]

    mask = None if row_nulls is None else pa.array(row_nulls)
    if kind == "list":
        base = pa.ListArray.from_arrays(pa.array(starts.astype(np.int32)), child, mask=mask)
    elif kind == "large_list":
        base = pa.LargeListArray.from_arrays(pa.array(starts), child, mask=mask)
    else:
        base = pa.FixedSizeListArray.from_arrays(child, width, mask=mask)

    offset, length = draw(slice_of(n))
    arr = base.slice(offset, length)
    pieces = draw(split(length))

    # The reference, row by row of the slice.
    values = np.zeros((length, width), dtype=np_dtype)
    nulls = np.zeros((length, width), dtype=bool)
    for r in range(length):
        row = offset + r
        if row_null[row]:
            nulls[r] = True
            continue
        begin = starts[row]
        values[r] = child_values[begin : begin + width]
        nulls[r] = elem_null[begin : begin + width]
    return {
        "kind": kind,
        "column": chunk(arr, pieces),
        "arr": arr,
        "values": values,
        "nulls": nulls,
        "row_null": row_null[offset : offset + length],
        "fill": draw(st.sampled_from(fills)),
        "policy": policy,
        "dtype": dtype,
        "np_dtype": np_dtype,
        "pieces": pieces,
        "width": width,
    }


@pytest.mark.parametrize("policy", POLICIES)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_lists_match_numpy_reference(policy, data):
    case = data.draw(list_case(policy))
    rows = case["arr"].to_pylist()
    # the generated array is what the reference says it is
    for r, row in enumerate(rows):
        assert (row is None) == bool(case["row_null"][r])
        if row is not None:
            assert [v is None for v in row] == case["nulls"][r].tolist()

    nulls = case["nulls"]
    describe(case, case["row_null"] | nulls.any(axis=1))
    expected = case["values"].copy()
    expected[nulls] = case["fill"]
    policy = case["policy"]
    chunked = isinstance(case["column"], pa.ChunkedArray) and case["column"].num_chunks > 1
    dtype = case["dtype"]

    if case["kind"] != "fixed_size_list" and len(expected) == 0:
        # no rows: a variable-size list's width is unknown, it becomes [0, 0]
        expected, nulls = expected[:, :0], nulls[:, :0]

    if policy == "error":
        row_has_null = case["row_null"] | nulls.any(axis=1)
        if row_has_null.any():
            with pytest.raises(NullValueError) as info:
                torchspark.to_tensor(case["column"])
            # a null row counts once, a null element of a valid row once each
            counts = np.where(case["row_null"], 1, nulls.sum(axis=1))
            total, first = null_error_expectation(row_has_null, counts)
            check_null_error(info, total, first, chunked)
            return
        t = torchspark.to_tensor(case["column"])
        check(t, expected, dtype)
        if not chunked and expected.size and dtype != torch.bool:
            assert t.data_ptr() == leaf_address(case["arr"]), "expected a zero-copy view"
            event("zero-copy checked")
        return

    # A variable-size list chunk whose rows are all null has no known width: it becomes
    # [rows, 0] (documented); several chunks then disagree (a known bug, tested apart).
    width = case["width"]
    if case["kind"] != "fixed_size_list" and width > 0:
        all_null = [b > a and case["row_null"][a:b].all() for a, b in case["pieces"]]
        non_empty = sum(b > a for a, b in case["pieces"])
        if any(all_null):
            assume(non_empty == 1)
            expected = expected[:, :0]
            nulls = nulls[:, :0]

    result = torchspark.to_tensor(case["column"], nulls=policy, fill=case["fill"])
    if policy == "mask":
        t, mask = result
        check(mask, ~nulls, torch.bool)
    else:
        t = result
    check(t, expected, dtype)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    d1=st.integers(1, 3),
    d2=st.integers(1, 3),
    offset=st.integers(0, 5),
    inner_fixed=st.booleans(),
)
def test_nested_uniform_lists_are_zero_copy_views(n, d1, d2, offset, inner_fixed):
    data = np.arange(n * d1 * d2, dtype=np.float32).reshape(n, d1, d2) * 0.5
    inner = pa.list_(pa.float32(), d2) if inner_fixed else pa.list_(pa.float32())
    arr = pa.array(data.tolist(), type=pa.list_(inner))
    offset = min(offset, n - 1)
    sliced = arr.slice(offset)
    t = torchspark.to_tensor(sliced)
    check(t, data[offset:], torch.float32)
    assert t.data_ptr() == leaf_address(sliced)
