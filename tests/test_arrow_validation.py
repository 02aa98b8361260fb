"""Malformed Arrow C Data Interface structs: InvalidArrowError, never a crash, release once.

Each case exports a well-formed pyarrow array, hands torchspark a corrupted
*copy* of the structs (see arrow_ctypes.Counted) and checks that

* the right error is raised (InvalidArrowError, a ValueError; UnsupportedTypeError
  for a format torchspark does not know), its message naming the column (or
  "array"/"batch") and what was expected against what was found;
* the process survives (no value is read before the structure is validated);
* the consumer called each struct's release exactly once (checked with the
  counting release), so the producer's original was freed.

Cases that could crash the interpreter run in a subprocess.
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import arrow_ctypes as ac
import nanoarrow as na
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark import InvalidArrowError, TorchSparkError, UnsupportedTypeError

HERE = os.path.dirname(os.path.abspath(__file__))


# gc.collect() runs in most tests: make it cheap (see conftest.fast_gc).
pytestmark = pytest.mark.usefixtures("fast_gc")


# ---------------------------------------------------------------------------
# Inputs (small, well-formed; the cases corrupt copies of their structs).


def f32() -> pa.Array:
    return pa.array([1.0, 2.0, 3.0, 4.0], pa.float32())


def int_list() -> pa.Array:
    return pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32()))


def large_list() -> pa.Array:
    return pa.array([[1, 2], [3, 4], [5, 6]], pa.large_list(pa.int64()))


def fixed_list() -> pa.Array:
    return pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32(), 2))


def binary() -> pa.Array:
    return pa.array([b"ab", b"cd", b"ef"], pa.binary())


def batch() -> pa.RecordBatch:
    return pa.record_batch(
        {
            "a": pa.array([1.0, 2.0, 3.0]),
            "b": pa.array([4, 5, 6], pa.int64()),
            "v": pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int32())),
        }
    )


def dictionary() -> pa.Array:
    return pa.array([1.5, 2.5, 1.5]).dictionary_encode()


def to_tensor(obj: Any) -> Any:
    return torchspark.to_tensor(obj)


def to_tensors(obj: Any) -> Any:
    return torchspark.to_tensors(obj)


def gather(obj: Any) -> Any:
    return torchspark.gather(obj, ["a", "b"])


def pad(obj: Any) -> Any:
    return torchspark.pad(obj)


def int32s(*values: int) -> Any:
    return (ctypes.c_int32 * len(values))(*values)


def int64s(*values: int) -> Any:
    return (ctypes.c_int64 * len(values))(*values)


def set_fields(**fields: Any) -> Callable[[ac.TrackedArray], None]:
    """Corrupts top-level ArrowArray fields of the consumer's copy."""

    def corrupt(t: ac.TrackedArray) -> None:
        for name, value in fields.items():
            setattr(t.array.view, name, value)

    return corrupt


def set_buffer(index: int, value: int | None) -> Callable[[ac.TrackedArray], None]:
    def corrupt(t: ac.TrackedArray) -> None:
        t.array.buffers()[index] = value

    return corrupt


def replace_offsets(offsets: Any) -> Callable[[ac.TrackedArray], None]:
    def corrupt(t: ac.TrackedArray) -> None:
        t.array.replace_buffer(1, offsets)

    return corrupt


def set_format(fmt: bytes | None) -> Callable[[ac.TrackedArray], None]:
    def corrupt(t: ac.TrackedArray) -> None:
        t.schema.set_format(fmt)

    return corrupt


def column_fields(column: int, **fields: Any) -> Callable[[ac.TrackedArray], None]:
    """Corrupts one column (child) of a record batch."""

    def corrupt(t: ac.TrackedArray) -> None:
        child = t.array.child(column)
        for name, value in fields.items():
            setattr(child, name, value)

    return corrupt


def column_buffer(column: int, index: int, value: int | None) -> Callable[[ac.TrackedArray], None]:
    def corrupt(t: ac.TrackedArray) -> None:
        t.array.buffers(t.array.child(column))[index] = value

    return corrupt


def list_values(**fields: Any) -> Callable[[ac.TrackedArray], None]:
    """Corrupts the values (child) array of a list."""

    def corrupt(t: ac.TrackedArray) -> None:
        child = t.array.child(0)
        for name, value in fields.items():
            setattr(child, name, value)

    return corrupt


def schema_children_mismatch(t: ac.TrackedArray) -> None:
    # The schema claims two (well-formed) children for a list; the array has one.
    table = t.schema.children(n=2)
    table[1] = table[0]
    t.schema.view.n_children = 2


def array_children_mismatch(t: ac.TrackedArray) -> None:
    # The array claims two (well-formed) children for a list; the schema has one.
    table = t.array.children(n=2)
    table[1] = table[0]
    t.array.view.n_children = 2


def null_column_pointer(t: ac.TrackedArray) -> None:
    t.array.children()[1] = None


def null_schema_column_pointer(t: ac.TrackedArray) -> None:
    t.schema.children()[1] = None


def list_child_format(fmt: bytes | None) -> Callable[[ac.TrackedArray], None]:
    def corrupt(t: ac.TrackedArray) -> None:
        t.schema.set_format(fmt, t.schema.child(0))

    return corrupt


def dictionary_length(t: ac.TrackedArray) -> None:
    t.array.dictionary().length = -3


def fixed_list_overflow(t: ac.TrackedArray) -> None:
    t.array.view.offset = 2**62
    t.schema.set_format(b"+w:4")


def batch_column_format(t: ac.TrackedArray) -> None:
    t.schema.set_format(b"+w:x", t.schema.child(1))


# (id, input, corruption, call, expected error, message pattern)
CASES = [
    # -- buffers and children counts --
    ("n_buffers", f32, set_fields(n_buffers=3), to_tensor, InvalidArrowError,
     r"array: expected 2 buffers for float32, got 3"),
    ("n_buffers_list", int_list, set_fields(n_buffers=1), to_tensor, InvalidArrowError,
     r"array: expected 2 buffers for list, got 1"),
    ("n_buffers_binary", binary, set_fields(n_buffers=2), to_tensor, InvalidArrowError,
     r"array: expected 3 buffers for binary, got 2"),
    ("buffers_pointer_null", f32, set_fields(buffers=None), to_tensor, InvalidArrowError,
     r"array: the buffers pointer is null"),
    ("array_n_children_0", int_list, set_fields(n_children=0), to_tensor, InvalidArrowError,
     r"array: expected 1 array children \(as in the schema\), got 0"),
    ("array_n_children_2", int_list, array_children_mismatch, to_tensor, InvalidArrowError,
     r"array: expected 1 array children \(as in the schema\), got 2"),
    ("schema_n_children_2", int_list, schema_children_mismatch, to_tensor, InvalidArrowError,
     r"array: expected 1 schema children for list, got 2"),
    ("primitive_with_child", f32, lambda t: setattr(t.array.view, "n_children", 1), to_tensor,
     InvalidArrowError, r"array: expected 0 array children \(as in the schema\), got 1"),
    ("children_pointer_null", int_list, set_fields(children=None), to_tensor,
     InvalidArrowError, r"array: children pointers are null"),
    ("schema_children_pointer_null", int_list, lambda t: setattr(t.schema.view, "children", None),
     to_tensor, InvalidArrowError, r"array: schema has 1 children but a null children pointer"),
    # -- NULL buffers with rows --
    ("null_data", f32, set_buffer(1, None), to_tensor, InvalidArrowError,
     r"array: the data buffer is null but length is 4"),
    ("null_bool_data", lambda: pa.array([True, False]), set_buffer(1, None), to_tensor,
     InvalidArrowError, r"array: the data buffer is null but length is 2"),
    ("null_list_offsets", int_list, set_buffer(1, None), to_tensor, InvalidArrowError,
     r"array: the offsets buffer is null but length is 3"),
    ("null_binary_data", binary, set_buffer(2, None), to_tensor, InvalidArrowError,
     r"array: the data buffer is null but offsets span 6 bytes"),
    # -- lengths, offsets, null counts --
    ("negative_length", f32, set_fields(length=-1), to_tensor, InvalidArrowError,
     r"array: length must be >= 0, got -1"),
    ("negative_offset", f32, set_fields(offset=-1), to_tensor, InvalidArrowError,
     r"array: offset must be >= 0, got -1"),
    ("offset_length_overflow", f32, set_fields(offset=2**63 - 2), to_tensor, InvalidArrowError,
     r"array: offset 9223372036854775806 \+ length 4 overflows int64"),
    ("null_count_below_minus_one", f32, set_fields(null_count=-2), to_tensor, InvalidArrowError,
     r"array: null_count must be in \[-1, length 4\], got -2"),
    ("null_count_above_length", f32, set_fields(null_count=5), to_tensor, InvalidArrowError,
     r"array: null_count must be in \[-1, length 4\], got 5"),
    ("null_count_without_bitmap", f32, set_fields(null_count=1), to_tensor, InvalidArrowError,
     r"array: null_count is 1 but there is no validity bitmap"),
    # -- list offsets --
    ("list_offsets_decrease", int_list, replace_offsets(int32s(0, 4, 2, 6)), to_tensor,
     InvalidArrowError, r"array \(list values\): offsets must not decrease, "
     r"got offsets\[1\] = 4 > offsets\[2\] = 2"),
    ("list_offsets_past_child", int_list, replace_offsets(int32s(0, 2, 4, 7)), to_tensor,
     InvalidArrowError, r"array \(list values\): offsets end at 7 but the child array has only "
     r"6 elements"),
    ("list_first_offset_negative", int_list, replace_offsets(int32s(-2, 2, 4, 6)), to_tensor,
     InvalidArrowError, r"array \(list values\): offsets must be >= 0, got offsets\[0\] = -2"),
    ("large_list_offsets_decrease", large_list, replace_offsets(int64s(0, 2, 1, 6)), to_tensor,
     InvalidArrowError, r"offsets must not decrease, got offsets\[1\] = 2 > offsets\[2\] = 1"),
    ("large_list_offsets_past_child", large_list, replace_offsets(int64s(0, 2, 4, 2**40)),
     to_tensor, InvalidArrowError, r"offsets end at 1099511627776 but the child array has only 6"),
    ("list_values_shorter_than_offsets", int_list, list_values(length=5), to_tensor,
     InvalidArrowError, r"offsets end at 6 but the child array has only 5 elements"),
    ("binary_offsets_decrease", binary, replace_offsets(int32s(0, 4, 2, 6)), to_tensor,
     InvalidArrowError, r"array: offsets must not decrease, got offsets\[1\] = 4 > offsets\[2\]"),
    ("binary_first_offset_negative", binary, replace_offsets(int32s(-1, 2, 4, 6)), to_tensor,
     InvalidArrowError, r"array: offsets must be >= 0, got offsets\[0\] = -1"),
    # -- fixed_size_list --
    ("fixed_list_child_short", fixed_list, list_values(length=5), to_tensor, InvalidArrowError,
     r"array \(list values\): a fixed_size_list\[2\] of offset 0 and length 3 needs 6 child "
     r"elements, got 5"),
    ("fixed_list_offset_child_short", fixed_list, set_fields(offset=1), to_tensor,
     InvalidArrowError, r"fixed_size_list\[2\] of offset 1 and length 3 needs 8 child "
     r"elements, got 6"),
    ("fixed_list_size_overflow", fixed_list, fixed_list_overflow, to_tensor, InvalidArrowError,
     r"array: \(offset \+ length\) \* list size overflows int64"),
    # -- nested structs --
    ("list_values_released", int_list, list_values(release=None), to_tensor, InvalidArrowError,
     r"array \(list values\): the ArrowArray was already released"),
    ("list_values_negative_length", int_list, list_values(length=-1), to_tensor,
     InvalidArrowError, r"array \(list values\): length must be >= 0, got -1"),
    ("list_values_null_count", int_list, list_values(null_count=2), to_tensor, InvalidArrowError,
     r"array \(list values\): null_count is 2 but there is no validity bitmap"),
    ("list_values_no_format", int_list, list_child_format(None), to_tensor, InvalidArrowError,
     r"column 'item': the ArrowSchema has no format string"),
    ("list_values_unknown_format", int_list, list_child_format(b"?"), to_tensor,
     UnsupportedTypeError, r"format '\?'"),
    # -- format strings --
    ("format_fixed_list_malformed", fixed_list, set_format(b"+w:abc"), to_tensor,
     InvalidArrowError, r"array: malformed format string '\+w:abc'"),
    ("format_fixed_list_empty_size", fixed_list, set_format(b"+w:"), to_tensor,
     InvalidArrowError, r"array: malformed format string '\+w:'"),
    ("format_fixed_binary_malformed", lambda: pa.array([b"ab"], pa.binary(2)), set_format(b"w:-2"),
     to_tensor, InvalidArrowError, r"array: malformed format string 'w:-2'"),
    ("format_fixed_binary_zero", lambda: pa.array([b"ab"], pa.binary(2)), set_format(b"w:0"),
     to_tensor, InvalidArrowError, r"array: fixed_size_binary width must be > 0, got 0"),
    ("format_null", f32, set_format(None), to_tensor, InvalidArrowError,
     r"array: the ArrowSchema has no format string"),
    ("format_unknown", f32, set_format(b"Q"), to_tensor, UnsupportedTypeError,
     r"array: Arrow type 'Q' \(format 'Q'\) is not supported"),
    # -- dictionaries --
    ("dictionary_missing", dictionary, set_fields(dictionary=None),
     lambda o: torchspark.to_tensor(o, dictionary="decode"), InvalidArrowError,
     r"array: the schema is dictionary-encoded but the array has no dictionary"),
    ("dictionary_index_not_integer", dictionary, set_format(b"g"), to_tensor, InvalidArrowError,
     r"array: a dictionary's index type must be an integer, got float64"),
    ("dictionary_negative_length", dictionary, dictionary_length,
     lambda o: torchspark.to_tensor(o, dictionary="decode"), InvalidArrowError,
     r"array \(dictionary\): length must be >= 0, got -3"),
    # -- record batches (to_tensors / gather) --
    ("batch_column_shorter", batch, column_fields(1, length=2), to_tensors, InvalidArrowError,
     r"column 'b': has 2 rows but the batch has 3 \(column lengths differ within the batch\)"),
    ("batch_negative_length", batch, set_fields(length=-1), to_tensors, InvalidArrowError,
     r"batch: length must be >= 0, got -1"),
    ("batch_n_children", batch, set_fields(n_children=2), to_tensors, InvalidArrowError,
     r"batch: expected 3 array children \(as in the schema\), got 2"),
    ("batch_null_count_without_bitmap", batch, set_fields(null_count=1), to_tensors,
     InvalidArrowError, r"batch: null_count is 1 but there is no validity bitmap"),
    ("batch_column_pointer_null", batch, null_column_pointer, to_tensors, InvalidArrowError,
     r"batch: child 1 is a null pointer"),
    ("batch_schema_column_pointer_null", batch, null_schema_column_pointer, to_tensors,
     InvalidArrowError, r"batch: schema child 1 is a null pointer"),
    ("batch_column_null_data", batch, column_buffer(1, 1, None), to_tensors, InvalidArrowError,
     r"column 'b': the data buffer is null but length is 3"),
    ("batch_column_null_count", batch, column_fields(0, null_count=7), to_tensors,
     InvalidArrowError, r"column 'a': null_count must be in \[-1, length 3\], got 7"),
    ("batch_column_format", batch, batch_column_format, to_tensors, InvalidArrowError,
     r"column 'b': malformed format string '\+w:x'"),
    ("batch_list_column_offsets", batch,
     lambda t: t.array.replace_buffer(1, int32s(0, 2, 9, 6), t.array.child(2)), to_tensors,
     InvalidArrowError, r"column 'v' \(list values\): offsets must not decrease"),
    ("gather_column_shorter", batch, column_fields(1, length=2), gather, InvalidArrowError,
     r"column 'b': has 2 rows but the batch has 3"),
    ("gather_column_null_data", batch, column_buffer(0, 1, None), gather, InvalidArrowError,
     r"column 'a': the data buffer is null but length is 3"),
    ("gather_column_negative_offset", batch, column_fields(1, offset=-1), gather,
     InvalidArrowError, r"column 'b': offset must be >= 0, got -1"),
    ("gather_column_null_count", batch, column_fields(1, null_count=1), gather,
     InvalidArrowError, r"column 'b': null_count is 1 but there is no validity bitmap"),
    ("gather_column_n_buffers", batch, column_fields(0, n_buffers=1), gather, InvalidArrowError,
     r"column 'a': expected 2 buffers for float64, got 1"),
    # -- pad --
    ("pad_offsets_decrease", int_list, replace_offsets(int32s(0, 4, 2, 6)), pad,
     InvalidArrowError, r"offsets must not decrease, got offsets\[1\] = 4 > offsets\[2\] = 2"),
    ("pad_offsets_past_child", int_list, replace_offsets(int32s(0, 2, 4, 9)), pad,
     InvalidArrowError, r"offsets end at 9 but the child array has only 6 elements"),
    ("pad_first_offset_negative", int_list, replace_offsets(int32s(-4, 2, 4, 6)), pad,
     InvalidArrowError, r"offsets must be >= 0, got offsets\[0\] = -4"),
    ("pad_fixed_list_child_short", fixed_list, list_values(length=1), pad, InvalidArrowError,
     r"needs 6 child elements, got 1"),
    ("pad_negative_length", int_list, set_fields(length=-5), pad, InvalidArrowError,
     r"length must be >= 0, got -5"),
    ("pad_values_null_data", int_list, lambda t: t.array.buffers(t.array.child(0)).__setitem__(
        1, None), pad, InvalidArrowError, r"the data buffer is null but length is 6"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "corrupt", "call", "error", "match"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_malformed_struct_raises_and_releases_once(
    make: Callable[[], Any],
    corrupt: Callable[[ac.TrackedArray], None],
    call: Callable[[Any], Any],
    error: type[Exception],
    match: str,
) -> None:
    tracked = ac.TrackedArray(make())
    corrupt(tracked)
    with pytest.raises(error, match=match):
        call(tracked)
    gc.collect()
    assert tracked.release_calls == (1, 1)
    assert tracked.released
    assert ac.callback_errors() == []


def test_error_classes() -> None:
    assert issubclass(InvalidArrowError, ValueError)
    assert issubclass(InvalidArrowError, TorchSparkError)
    assert issubclass(UnsupportedTypeError, TypeError)
    assert issubclass(UnsupportedTypeError, TorchSparkError)


def test_corrupted_copy_leaves_the_original_intact() -> None:
    """The helper itself: the consumer sees the corruption, the original does not."""
    tracked = ac.TrackedArray(int_list())
    tracked.array.replace_buffer(1, int32s(0, 9, 9, 9))
    tracked.array.child(0).length = 1
    original = tracked.array.original
    assert original.children[0].contents.length == 6
    assert ctypes.cast(original.buffers[1], ctypes.POINTER(ctypes.c_int32))[1] == 2
    tracked.discard()
    assert tracked.released
    assert tracked.release_calls == (1, 1)


# ---------------------------------------------------------------------------
# Released structs: the consumer must refuse them, and release nothing twice.


def test_released_array_raises() -> None:
    tracked = ac.TrackedArray(f32())
    tracked.array.view.release = None  # as if a consumer had already moved it out
    with pytest.raises(InvalidArrowError, match="already released"):
        torchspark.to_tensor(tracked)
    gc.collect()
    # The live schema was taken and released once; the "released" array was not touched.
    assert tracked.release_calls == (1, 0)
    tracked.array.discard()
    assert tracked.released


def test_released_schema_raises() -> None:
    tracked = ac.TrackedArray(f32())
    tracked.schema.view.release = None
    with pytest.raises(InvalidArrowError, match="expected a live ArrowSchema"):
        torchspark.to_tensor(tracked)
    gc.collect()
    # The array was never taken: its capsule's destructor released it (once).
    assert tracked.release_calls == (0, 1)
    tracked.schema.discard()
    assert tracked.released


def test_released_batch_raises_in_gather_and_to_tensors() -> None:
    for call in (gather, to_tensors):
        tracked = ac.TrackedArray(batch())
        tracked.array.view.release = None
        with pytest.raises(InvalidArrowError, match="expected a live ArrowArray"):
            call(tracked)
        gc.collect()
        assert tracked.release_calls == (1, 0)
        tracked.array.discard()


def test_released_stream_raises() -> None:
    stream = ac.TrackedStream(pa.chunked_array([[1, 2]]))
    stream.stream.view.release = None
    with pytest.raises(InvalidArrowError, match="expected a live ArrowArrayStream"):
        torchspark.to_tensor(stream)
    assert stream.next_calls == 0 and stream.calls == 0
    stream.stream.discard()
    assert stream.stream.released


# ---------------------------------------------------------------------------
# Validation happens before any value is read: a bogus (non-NULL, unmapped)
# data pointer next to a structural error must give the error, not a crash.
# In a subprocess, so that a regression cannot take the test session down.

BOGUS_POINTER_SCRIPT = """
import ctypes, gc, pyarrow as pa, torchspark
import arrow_ctypes as ac

BOGUS = 0x10  # never mapped: reading it segfaults

def run(name, make, corrupt, call):
    t = ac.TrackedArray(make())
    corrupt(t)
    try:
        call(t)
        print(name, "NO ERROR")
    except torchspark.InvalidArrowError as e:
        gc.collect()
        print(name, "InvalidArrowError", t.release_calls, flush=True)

def prim_bad(t):
    t.array.buffers()[1] = BOGUS
    t.array.view.null_count = 9

def list_bad(t):
    t.array.buffers(t.array.child(0))[1] = BOGUS
    t.array.replace_buffer(1, (ctypes.c_int32 * 4)(0, 2, 4, 8))

def batch_bad(t):
    t.array.buffers(t.array.child(0))[1] = BOGUS   # column a: bogus data
    t.array.child(1).length = 1                    # column b: too short

def fixed_bad(t):
    t.array.buffers(t.array.child(0))[1] = BOGUS
    t.array.child(0).length = 3

run("primitive", lambda: pa.array([1.0, 2.0]), prim_bad, torchspark.to_tensor)
run("list", lambda: pa.array([[1, 2], [3, 4], [5, 6]]), list_bad, torchspark.to_tensor)
run("list_pad", lambda: pa.array([[1, 2], [3, 4], [5, 6]]), list_bad, torchspark.pad)
run("fixed", lambda: pa.array([[1, 2]] * 3, pa.list_(pa.int64(), 2)), fixed_bad,
    torchspark.to_tensor)
batch = lambda: pa.record_batch({"a": [1.0, 2.0], "b": [3.0, 4.0]})
run("gather", batch, batch_bad, lambda o: torchspark.gather(o, ["a", "b"]))
run("to_tensors", batch, batch_bad, torchspark.to_tensors)
"""


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_value_is_read_before_validation() -> None:
    result = run_script(BOGUS_POINTER_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    names = ["primitive", "list", "list_pad", "fixed", "gather", "to_tensors"]
    assert lines == [f"{name} InvalidArrowError (1, 1)" for name in names], result.stderr


# ---------------------------------------------------------------------------
# Streams: a malformed chunk or schema anywhere in the stream.


def reader(n_chunks: int = 3) -> pa.RecordBatchReader:
    batches = [
        pa.record_batch({"a": pa.array([1.0, 2.0]), "b": pa.array([i, i + 1])})
        for i in range(n_chunks)
    ]
    return pa.RecordBatchReader.from_batches(batches[0].schema, batches)


def assert_stream_released_once(stream: ac.TrackedStream, n_arrays: int) -> None:
    gc.collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.schemas] == [1]
    assert [c.calls for c in stream.arrays] == [1] * n_arrays
    assert all(c.released for c in stream.arrays)
    assert stream.stream.released


def test_stream_with_corrupted_second_batch() -> None:
    def corrupt(index: int, counted: ac.Counted) -> None:
        if index == 1:
            counted.child(1).length = 1

    stream = ac.TrackedStream(reader(), on_array=corrupt)
    with pytest.raises(InvalidArrowError, match=r"column 'b': has 1 rows but the batch has 2"):
        torchspark.to_tensors(stream)
    assert_stream_released_once(stream, 3)


def test_stream_with_corrupted_chunk_of_a_column() -> None:
    def corrupt(index: int, counted: ac.Counted) -> None:
        if index == 2:
            counted.view.null_count = -7

    stream = ac.TrackedStream(pa.chunked_array([[1, 2], [3], [4, 5]]), on_array=corrupt)
    with pytest.raises(InvalidArrowError, match=r"null_count must be in \[-1, length 2\], got -7"):
        torchspark.to_tensor(stream)
    assert_stream_released_once(stream, 3)


def test_stream_gather_with_corrupted_column() -> None:
    def corrupt(index: int, counted: ac.Counted) -> None:
        if index == 1:
            counted.buffers(counted.child(0))[1] = None

    stream = ac.TrackedStream(reader(), on_array=corrupt)
    with pytest.raises(InvalidArrowError, match=r"column 'a': the data buffer is null"):
        torchspark.gather(stream, ["a", "b"])
    assert_stream_released_once(stream, 3)


def test_stream_with_negative_length_chunk() -> None:
    def corrupt(index: int, counted: ac.Counted) -> None:
        if index == 0:
            counted.view.length = -1

    stream = ac.TrackedStream(pa.chunked_array([[1, 2], [3]]), on_array=corrupt)
    with pytest.raises(InvalidArrowError, match=r"length must be >= 0, got -1"):
        torchspark.to_tensor(stream)
    assert_stream_released_once(stream, 2)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        pytest.param(lambda c: c.set_format(None), "has no format string", id="no_format"),
        pytest.param(
            lambda c: c.set_format(b"+w:12x", c.child(0)),
            r"column 'a': malformed format string",
            id="column_format",
        ),
        pytest.param(
            lambda c: setattr(c.view, "children", None),
            r"schema has 2 children but a null children pointer",
            id="children_null",
        ),
        pytest.param(
            lambda c: setattr(c.view, "n_children", -1),
            r"n_children must be >= 0, got -1",
            id="negative_n_children",
        ),
    ],
)
def test_stream_with_corrupted_schema(corrupt: Callable[[ac.Counted], None], match: str) -> None:
    stream = ac.TrackedStream(reader(2), on_schema=corrupt)
    with pytest.raises(InvalidArrowError, match=match):
        torchspark.to_tensors(stream)
    gc.collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.schemas] == [1]
    assert all(c.calls == 1 for c in stream.arrays)


def test_stream_with_released_schema() -> None:
    stream = ac.TrackedStream(reader(2), on_schema=lambda c: setattr(c.view, "release", None))
    with pytest.raises(InvalidArrowError, match="already released"):
        torchspark.to_tensors(stream)
    gc.collect()
    assert stream.calls == 1
    assert stream.arrays == []  # nothing read after the bad schema
    stream.schemas[0].discard()


def test_stream_get_schema_fails() -> None:
    stream = ac.TrackedStream(reader(2), fail_schema=True, error_message="no schema today")
    with pytest.raises(InvalidArrowError, match=r"get_schema failed \(errno 5\): no schema today"):
        torchspark.to_tensors(stream)
    gc.collect()
    assert stream.calls == 1
    assert stream.schemas == [] and stream.arrays == []


def test_stream_get_next_fails_without_message() -> None:
    stream = ac.TrackedStream(reader(3), fail_at=1)
    stream.stream.view.get_last_error = None  # a producer with no get_last_error
    with pytest.raises(InvalidArrowError, match=r"chunk 1 \(errno 5\).*gave no message"):
        torchspark.to_tensors(stream)
    assert_stream_released_once(stream, 1)


def test_empty_stream_with_malformed_batch_schema() -> None:
    empty = pa.RecordBatchReader.from_batches(pa.schema([("a", pa.float64())]), [])
    stream = ac.TrackedStream(empty, on_schema=lambda c: c.set_format(None, c.child(0)))
    with pytest.raises(InvalidArrowError, match=r"column 'a': the ArrowSchema has no format"):
        torchspark.to_tensors(stream)
    gc.collect()
    assert stream.calls == 1 and [c.calls for c in stream.schemas] == [1]


EMPTY_STREAM_SCRIPT = """
import pyarrow as pa, torchspark
import arrow_ctypes as ac

def drop_children(c):
    c.view.n_children = 0
    c.view.children = None

for name, typ, call in [
    ("list", pa.list_(pa.float32()), torchspark.to_tensor),
    ("fixed_size_list", pa.list_(pa.float32(), 2), torchspark.to_tensor),
]:
    stream = ac.TrackedStream(pa.chunked_array([], type=typ), on_schema=drop_children)
    try:
        call(stream)
        print(name, "NO ERROR", flush=True)
    except torchspark.InvalidArrowError as e:
        print(name, "InvalidArrowError", stream.calls, flush=True)
"""


def test_empty_stream_list_schema_without_children() -> None:
    result = run_script(EMPTY_STREAM_SCRIPT)
    assert result.returncode == 0, f"exit code {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.splitlines() == [
        "list InvalidArrowError 1",
        "fixed_size_list InvalidArrowError 1",
    ]


# ---------------------------------------------------------------------------
# Other producers of malformed data, and bounds.


def test_nanoarrow_unvalidated_arrays() -> None:
    values = na.c_array([1, 2, 3], na.int32())
    bad_offsets = na.c_array_from_buffers(
        na.list_(na.int32()),
        2,
        buffers=[None, na.c_buffer([0, 3, 2], na.int32())],
        children=[values],
        validation_level="none",
    )
    with pytest.raises(InvalidArrowError, match=r"offsets must not decrease"):
        torchspark.to_tensor(bad_offsets)
    past_end = na.c_array_from_buffers(
        na.list_(na.int32()),
        2,
        buffers=[None, na.c_buffer([0, 2, 5], na.int32())],
        children=[values],
        validation_level="none",
    )
    with pytest.raises(InvalidArrowError, match=r"offsets end at 5 but the child array has only 3"):
        torchspark.pad(past_end)
    no_bitmap = na.c_array_from_buffers(
        na.int32(),
        2,
        buffers=[None, na.c_buffer([1, 2], na.int32())],
        null_count=1,
        validation_level="none",
    )
    with pytest.raises(InvalidArrowError, match=r"null_count is 1 but there is no validity"):
        torchspark.to_tensor(no_bitmap)


def test_nesting_deeper_than_the_bound_raises() -> None:
    typ: pa.DataType = pa.int8()
    value: Any = 1
    for _ in range(80):
        typ = pa.list_(typ)
        value = [value]
    tracked = ac.TrackedArray(pa.array([value], typ))
    with pytest.raises(TorchSparkError, match="nesting deeper than 64 levels"):
        torchspark.to_tensor(tracked)
    gc.collect()
    assert tracked.release_calls == (1, 1)


@pytest.mark.parametrize("nulls", ["fill", "mask"])
def test_all_null_dictionary_column_decodes(nulls: str) -> None:
    # What pyarrow makes of an all-null column: every index null, an empty dictionary.
    column = pa.array([None, None], pa.float32()).dictionary_encode()
    assert len(column.dictionary) == 0
    result = torchspark.to_tensor(column, dictionary="decode", nulls=nulls, fill=7)
    values = result[0] if nulls == "mask" else result
    assert values.tolist() == [7.0, 7.0]


def test_valid_input_after_corruption_tests_still_works() -> None:
    # The helpers left nothing behind that breaks a normal conversion.
    out = torchspark.to_tensors(ac.TrackedArray(batch()))
    assert torch.equal(out["b"], torch.tensor([4, 5, 6]))
    assert torch.equal(out["v"], torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.int32))
