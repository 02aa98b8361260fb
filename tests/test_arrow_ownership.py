"""Ownership of imported and exported Arrow structs: release exactly once, on every path.

Imports are checked with counting copies of pyarrow's structs (arrow_ctypes):
the release callback must not run while a tensor (or a view of one) still uses
the buffers, must run exactly once when the last one dies, and must run exactly
once on every error path. Leaks are checked with pyarrow's allocator
(``pa.total_allocated_bytes``) over many iterations; exports with torch's
storage use count.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any

import arrow_ctypes as ac
import nanoarrow as na
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

import torchspark
from torchspark import InvalidArrowError, NullValueError, UnsupportedTypeError

# gc.collect() runs in most tests: make it cheap (see conftest.fast_gc).
pytestmark = pytest.mark.usefixtures("fast_gc")


def collect() -> None:
    gc.collect()


def storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def data_address(array: pa.Array) -> int:
    """The address of the (innermost) values buffer of a pyarrow array."""
    while (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
    ):
        array = array.values
    return array.buffers()[1].address + array.offset * array.type.bit_width // 8


# ---------------------------------------------------------------------------
# Success paths: zero-copy views keep the import alive, then release it once.

ZERO_COPY = [
    pytest.param(lambda: pa.array(np.arange(6, dtype=np.float32)), (6,), id="float32"),
    pytest.param(lambda: pa.array(np.arange(6, dtype=np.int64)).slice(2), (4,), id="sliced"),
    pytest.param(
        lambda: pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float64())),
        (3, 2),
        id="list",
    ),
    pytest.param(
        lambda: pa.array([[1, 2], [3, 4]], pa.list_(pa.int16(), 2)), (2, 2), id="fixed_size_list"
    ),
    pytest.param(
        lambda: pa.array([[[1, 2]], [[3, 4]]], pa.large_list(pa.list_(pa.int32()))),
        (2, 1, 2),
        id="nested",
    ),
    pytest.param(lambda: pa.array([3, 1, 3]).dictionary_encode(), (3,), id="dictionary_indices"),
]


@pytest.mark.parametrize(("make", "shape"), ZERO_COPY)
def test_zero_copy_tensor_keeps_import_alive(make: Callable[[], Any], shape: tuple) -> None:
    source = make()
    tracked = ac.TrackedArray(source)
    t = torchspark.to_tensor(tracked)
    assert tuple(t.shape) == shape
    if not pa.types.is_dictionary(source.type):
        assert t.data_ptr() == data_address(source)  # a view, not a copy
    collect()
    assert tracked.release_calls == (0, 0)
    assert not tracked.array.view.release  # the consumer moved the structs out
    assert not tracked.schema.view.release
    expected = t.clone()
    del source
    collect()
    assert torch.equal(t, expected)
    del t
    collect()
    assert tracked.release_calls == (1, 1)
    assert tracked.released


def test_binary_cells_zero_copy_keep_import_alive() -> None:
    rows = [np.arange(4, dtype=np.float32).tobytes(), np.ones(4, dtype=np.float32).tobytes()]
    tracked = ac.TrackedArray(pa.array(rows, pa.binary(16)))
    t = torchspark.to_tensor(tracked, dtype=torch.float32)
    collect()
    assert tracked.release_calls == (0, 0)
    assert torch.equal(t[1], torch.ones(4))
    del t
    collect()
    assert tracked.release_calls == (1, 1)


VIEWS: list[Callable[[torch.Tensor], torch.Tensor]] = [
    lambda t: t[1:],
    lambda t: t.view(2, 3),
    lambda t: t.view(2, 3).t(),
    lambda t: t.reshape(3, 2)[::2],
    lambda t: t.as_strided((2,), (3,)),
    lambda t: t.view(torch.int32),
    lambda t: t.unsqueeze(0).expand(4, 6),
    lambda t: t[1:][1:].view(2, 2)[0],
    lambda t: torch.from_numpy(t.numpy()[2:]),
]


@pytest.mark.parametrize("make_view", VIEWS)
def test_views_of_views_keep_import_alive(
    make_view: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    tracked = ac.TrackedArray(pa.array(np.arange(6, dtype=np.float32)))
    t = torchspark.to_tensor(tracked)
    view = make_view(t)
    expected = view.clone()
    del t
    collect()
    assert tracked.release_calls == (0, 0)
    assert torch.equal(view, expected)
    view2 = view.view_as(view)
    del view
    collect()
    assert tracked.release_calls == (0, 0)
    del view2
    collect()
    assert tracked.release_calls == (1, 1)


def test_tensor_dropped_on_another_thread_releases_once() -> None:
    tracked = ac.TrackedArray(pa.array(np.arange(100, dtype=np.float64)))
    holder = [torchspark.to_tensor(tracked)]
    thread = threading.Thread(target=holder.clear)
    thread.start()
    thread.join()
    collect()
    assert tracked.release_calls == (1, 1)


def test_concurrent_imports_release_each_once() -> None:
    collect()
    baseline = pa.total_allocated_bytes()
    tracked = [ac.TrackedArray(pool_array(5000)) for _ in range(40)]
    results: list[float] = []

    def work(items: list[ac.TrackedArray]) -> None:
        for item in items:
            t = torchspark.to_tensor(item)
            results.append(float(t.sum()))
            del t

    threads = [threading.Thread(target=work, args=(tracked[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    collect()
    assert len(results) == 40
    assert all(t.release_calls == (1, 1) for t in tracked)
    assert pa.total_allocated_bytes() == baseline


def test_to_tensors_releases_batch_once_after_all_tensors_die() -> None:
    batch = pa.record_batch(
        {
            "a": pa.array(np.arange(4, dtype=np.float32)),
            "b": pa.array(np.arange(4, dtype=np.int64)),
            "v": pa.array([[i, i] for i in range(4)], pa.list_(pa.int32())),
            "m": pa.array([1.0, 2.0, 3.0, 4.0]),
        }
    )
    tracked = ac.TrackedArray(batch)
    out = torchspark.to_tensors(tracked, nulls="mask")
    values = {name: pair[0] for name, pair in out.items()}
    del out
    assert values["a"].data_ptr() == data_address(batch.column("a"))
    for name in ["a", "v", "m"]:
        del values[name]
        collect()
        assert tracked.release_calls == (0, 0), f"released while column 'b' is alive ({name})"
    assert torch.equal(values["b"], torch.arange(4))
    del values
    collect()
    assert tracked.release_calls == (1, 1)


def test_from_tensor_of_imported_view_keeps_import_alive() -> None:
    tracked = ac.TrackedArray(pa.array(np.arange(8, dtype=np.float32)))
    t = torchspark.to_tensor(tracked)
    exported = torchspark.from_tensor(t.view(4, 2))
    del t
    collect()
    assert tracked.release_calls == (0, 0)
    assert exported.to_pylist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
    del exported
    collect()
    assert tracked.release_calls == (1, 1)


# ---------------------------------------------------------------------------
# Copy paths: nothing of the import outlives the call.


def with_null() -> pa.Array:
    return pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int32()))


COPIES = [
    pytest.param(
        lambda: pa.array([[1, 2], [3, 4]], pa.list_(pa.int32())),
        lambda o: torchspark.to_tensor(o, dtype=torch.float64),
        id="dtype_cast",
    ),
    pytest.param(
        lambda: pa.chunked_array([[[1, 2]], [[3, 4]]], pa.list_(pa.int32())),
        torchspark.to_tensor,
        id="chunks",
    ),
    pytest.param(with_null, lambda o: torchspark.to_tensor(o, nulls="fill", fill=-1), id="fill"),
    pytest.param(with_null, lambda o: torchspark.to_tensor(o, nulls="mask"), id="mask"),
    pytest.param(with_null, lambda o: torchspark.pad(o, nulls="fill"), id="pad"),
]


@pytest.mark.parametrize(("make", "call"), COPIES)
def test_copy_paths_release_before_returning(
    make: Callable[[], Any], call: Callable[[Any], Any]
) -> None:
    source = make()
    tracked = (
        ac.TrackedStream(source) if isinstance(source, pa.ChunkedArray) else ac.TrackedArray(source)
    )
    result = call(tracked)
    collect()
    if isinstance(tracked, ac.TrackedStream):
        assert tracked.calls == 1 and [c.calls for c in tracked.arrays] == [1, 1]
    else:
        assert tracked.release_calls == (1, 1)
    first = result[0] if isinstance(result, tuple) else result
    assert first[0].tolist() == [1, 2]


def test_bool_dictionary_decode_and_gather_release_before_returning() -> None:
    for make, call in [
        (lambda: pa.array([True, False, True]), torchspark.to_tensor),
        (
            lambda: pa.array([2.5, 1.5, 2.5]).dictionary_encode(),
            lambda o: torchspark.to_tensor(o, dictionary="decode"),
        ),
        (
            lambda: pa.record_batch({"a": [1.0, 2.0], "b": [3, 4]}),
            lambda o: torchspark.gather(o, ["b", "a"]),
        ),
    ]:
        tracked = ac.TrackedArray(make())
        result = call(tracked)
        collect()
        assert tracked.release_calls == (1, 1)
        del result


# ---------------------------------------------------------------------------
# Error paths.

ERRORS = [
    pytest.param(
        lambda: pa.array([1.0, None]), torchspark.to_tensor, NullValueError, "1 null value",
        id="null",
    ),
    pytest.param(
        lambda: pa.array(["x", "y"]), torchspark.to_tensor, UnsupportedTypeError, "utf8",
        id="unsupported",
    ),
    pytest.param(
        lambda: pa.array([[1, 2], [3]]), torchspark.to_tensor, ValueError, "same length",
        id="ragged",
    ),
    pytest.param(
        lambda: pa.array([[1, None]]), torchspark.pad, NullValueError, "null", id="pad_null",
    ),
    pytest.param(
        lambda: pa.record_batch({"a": [1.0, None]}), lambda o: torchspark.gather(o, ["a"]),
        NullValueError, "column 'a'", id="gather_null",
    ),
    pytest.param(
        lambda: pa.record_batch({"a": [1.0]}), lambda o: torchspark.to_tensors(o, ["zz"]),
        ValueError, "column 'zz' not found", id="missing_column",
    ),
    pytest.param(
        lambda: pa.record_batch({"a": [1.0]}), torchspark.to_tensor, UnsupportedTypeError,
        "expected a single column", id="batch_as_column",
    ),
    pytest.param(
        lambda: pa.record_batch({"a": [1.0]}),
        lambda o: torchspark.gather(o, ["a"], out=torch.empty(5, 1)),
        ValueError, "out must be", id="gather_bad_out",
    ),
    pytest.param(
        lambda: pa.array([10, 0]).dictionary_encode(),
        lambda o: torchspark.to_tensor(o, dtype=torch.complex64),
        TypeError, "ComplexFloat is not supported", id="bad_dtype",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("make", "call", "error", "match"), ERRORS)
def test_error_paths_release_once(
    make: Callable[[], Any], call: Callable[[Any], Any], error: type[Exception], match: str
) -> None:
    tracked = ac.TrackedArray(make())
    with pytest.raises(error, match=match):
        call(tracked)
    collect()
    assert tracked.release_calls == (1, 1)
    assert tracked.released


def test_argument_errors_leave_the_input_untouched() -> None:
    tracked = ac.TrackedArray(pa.array([1.0]))
    with pytest.raises(ValueError, match="nulls: expected one of"):
        torchspark.to_tensor(tracked, nulls="bogus")
    with pytest.raises(TypeError, match="fill"):
        torchspark.to_tensor(tracked, fill="x")
    collect()
    assert tracked.release_calls == (0, 0)
    assert tracked.array.view.release and tracked.schema.view.release
    tracked.discard()
    assert tracked.released


def test_capsules_not_taken_are_released_by_their_destructors() -> None:
    tracked = ac.TrackedArray(pa.array([1, 2]))

    class Swapped:
        def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]:
            schema, array = tracked.__arrow_c_array__()
            return array, schema

    with pytest.raises(TypeError, match="expected a PyCapsule named 'arrow_schema'"):
        torchspark.to_tensor(Swapped())
    collect()
    assert tracked.release_calls == (1, 1)


def test_half_released_capsule_pair() -> None:
    # Schema already released, array live: the array stays with its capsule,
    # whose destructor releases it.
    tracked = ac.TrackedArray(pa.array([1, 2, 3]))
    capsules = tracked.__arrow_c_array__()
    tracked.schema.discard()
    with pytest.raises(InvalidArrowError, match="expected a live ArrowSchema"):
        torchspark.to_tensor(ac.CapsuleProducer(array=capsules))
    assert tracked.release_calls == (1, 0)
    del capsules
    collect()
    assert tracked.release_calls == (1, 1)
    # Array already released, schema live: the schema is taken and released once.
    tracked = ac.TrackedArray(pa.array([1, 2, 3]))
    capsules = tracked.__arrow_c_array__()
    tracked.array.discard()
    with pytest.raises(InvalidArrowError, match="expected a live ArrowArray"):
        torchspark.to_tensor(ac.CapsuleProducer(array=capsules))
    collect()
    assert tracked.release_calls == (1, 1)
    del capsules
    collect()
    assert tracked.release_calls == (1, 1)


def test_capsule_passed_twice() -> None:
    source = pa.array([1.0, 2.0, 3.0])
    producer = ac.CapsuleProducer(array=source.__arrow_c_array__())
    first = torchspark.to_tensor(producer)
    with pytest.raises(InvalidArrowError, match="already released"):
        torchspark.to_tensor(producer)
    assert first.tolist() == [1.0, 2.0, 3.0]
    del producer
    collect()
    assert first.tolist() == [1.0, 2.0, 3.0]  # the capsules' destructors freed nothing twice

    tracked = ac.TrackedArray(pa.record_batch({"a": [1.0, 2.0]}))
    producer = ac.CapsuleProducer(array=tracked.__arrow_c_array__())
    assert torchspark.gather(producer).tolist() == [[1.0], [2.0]]
    with pytest.raises(InvalidArrowError, match="already released"):
        torchspark.gather(producer)
    with pytest.raises(InvalidArrowError, match="already released"):
        torchspark.to_tensors(producer)
    del producer
    collect()
    assert tracked.release_calls == (1, 1)


def test_stream_capsule_passed_twice() -> None:
    stream = ac.TrackedStream(pa.chunked_array([[1, 2], [3]]))
    producer = ac.CapsuleProducer(stream=stream.__arrow_c_stream__())
    assert torchspark.to_tensor(producer).tolist() == [1, 2, 3]
    with pytest.raises(InvalidArrowError, match="expected a live ArrowArrayStream"):
        torchspark.to_tensor(producer)
    del producer
    collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.arrays] == [1, 1]
    assert [c.calls for c in stream.schemas] == [1]


# ---------------------------------------------------------------------------
# Streams.


def batches(n: int, rows: int = 4) -> list[pa.RecordBatch]:
    return [
        pa.record_batch(
            {
                "x": pa.array(np.arange(rows, dtype=np.float32) + 10 * i),
                "y": pa.array(np.full(rows, i, dtype=np.int64)),
            }
        )
        for i in range(n)
    ]


def test_stream_with_several_chunks_releases_each_once() -> None:
    data = batches(4)
    stream = ac.TrackedStream(pa.RecordBatchReader.from_batches(data[0].schema, data))
    out = torchspark.to_tensors(stream)
    collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.arrays] == [1, 1, 1, 1]  # copied: released at return
    assert [c.calls for c in stream.schemas] == [1]
    expected = torch.cat([torch.arange(4, dtype=torch.float32) + 10 * i for i in range(4)])
    assert torch.equal(out["x"], expected)


def test_single_chunk_stream_view_outlives_the_stream() -> None:
    data = batches(1)
    stream = ac.TrackedStream(pa.RecordBatchReader.from_batches(data[0].schema, data))
    x = torchspark.to_tensors(stream, ["x"])["x"]
    assert x.data_ptr() == data_address(data[0].column("x"))
    collect()
    assert stream.calls == 1  # the stream is done with once read
    assert [c.calls for c in stream.arrays] == [0]  # the chunk lives on in the tensor
    del x
    collect()
    assert [c.calls for c in stream.arrays] == [1]
    assert [c.calls for c in stream.schemas] == [1]


def test_empty_stream_releases_once() -> None:
    stream = ac.TrackedStream(pa.RecordBatchReader.from_batches(batches(1)[0].schema, []))
    out = torchspark.to_tensors(stream)
    assert out["x"].shape == (0,) and out["y"].dtype == torch.int64
    collect()
    assert stream.calls == 1 and [c.calls for c in stream.schemas] == [1]


def failing_reader(n_good: int, message: str = "producer exploded") -> pa.RecordBatchReader:
    data = batches(n_good + 1, rows=1000)

    def generate() -> Iterator[pa.RecordBatch]:
        yield from (
            pa.record_batch({"x": pc.add(b.column("x"), 1), "y": b.column("y")})
            for b in data[:n_good]
        )
        raise RuntimeError(message)

    return pa.RecordBatchReader.from_batches(data[0].schema, generate())


def test_stream_failing_midway_releases_earlier_chunks() -> None:
    stream = ac.TrackedStream(failing_reader(3))
    with pytest.raises(InvalidArrowError, match=r"get_next failed on chunk 3.*producer exploded"):
        torchspark.to_tensors(stream)
    collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.arrays] == [1, 1, 1]
    assert [c.calls for c in stream.schemas] == [1]
    assert all(c.released for c in stream.arrays)


def test_pyarrow_stream_failing_midway_frees_its_memory() -> None:
    collect()
    baseline = pa.total_allocated_bytes()
    for call in (torchspark.to_tensors, torchspark.gather):
        for _ in range(20):
            with pytest.raises(InvalidArrowError, match="producer exploded"):
                call(failing_reader(2))
    collect()
    assert pa.total_allocated_bytes() == baseline


def test_stream_failing_on_first_chunk() -> None:
    stream = ac.TrackedStream(failing_reader(0, "nothing at all"))
    with pytest.raises(InvalidArrowError, match=r"chunk 0.*nothing at all"):
        torchspark.gather(stream)
    collect()
    assert stream.calls == 1 and stream.arrays == []
    assert [c.calls for c in stream.schemas] == [1]


def test_own_stream_failing_midway() -> None:
    data = batches(3)
    stream = ac.TrackedStream(
        pa.RecordBatchReader.from_batches(data[0].schema, data),
        fail_at=2,
        error_message="disk on fire",
    )
    with pytest.raises(InvalidArrowError, match=r"chunk 2 \(errno 5\): disk on fire"):
        torchspark.to_tensors(stream)
    collect()
    assert stream.calls == 1
    assert [c.calls for c in stream.arrays] == [1, 1]
    # The stream's own release freed pyarrow's third batch, never handed out.
    assert stream.stream.released


# ---------------------------------------------------------------------------
# Memory: pyarrow's allocator returns to its baseline.


def pool_array(n: int) -> pa.Array:
    """A float32 array whose buffer pyarrow's memory pool allocated."""
    return pc.add(pa.array(np.arange(n, dtype=np.float32)), 1.0)


def one_round(n: int) -> None:
    t = torchspark.to_tensor(pool_array(n))
    view = t[1:].view(-1, 8)[::2]
    del t
    assert view.numel() > 0
    del view
    batch = pa.record_batch(
        {
            "a": pool_array(n),
            "b": pc.cast(pool_array(n), pa.int64()),
            "v": pa.FixedSizeListArray.from_arrays(pool_array(2 * n), 2),
            "l": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
        }
    )
    tensors = torchspark.to_tensors(batch)
    gathered = torchspark.gather(batch, ["a", "b"])
    padded = torchspark.pad(batch.column("l"))
    chunked = torchspark.to_tensor(pa.chunked_array([pool_array(n), pool_array(n)]))
    masked = torchspark.to_tensor(
        pc.if_else(pc.greater(pool_array(n), 3), pool_array(n), None), nulls="mask"
    )
    del batch, tensors, gathered, padded, chunked, masked
    for bad, error in [
        (pa.array([1.0, None]), NullValueError),
        (pa.array([[1], [1, 2]]), ValueError),
        (pa.array(["x"]), UnsupportedTypeError),
    ]:
        with pytest.raises(error):
            torchspark.to_tensor(bad)


def test_no_leak_over_many_iterations() -> None:
    collect()
    baseline = pa.total_allocated_bytes()
    t = torchspark.to_tensor(pool_array(1001))
    assert pa.total_allocated_bytes() > baseline  # the precondition: pool memory is counted
    del t
    collect()
    assert pa.total_allocated_bytes() == baseline
    for _ in range(150):
        one_round(1001)
    collect()
    assert pa.total_allocated_bytes() == baseline


def test_tensor_holds_pool_memory_until_it_dies() -> None:
    collect()
    baseline = pa.total_allocated_bytes()
    tensors = [torchspark.to_tensor(pool_array(10_000)) for _ in range(10)]
    held = pa.total_allocated_bytes() - baseline
    assert held >= 10 * 10_000 * 4
    assert all(t[-1].item() == 10_000.0 for t in tensors)
    tensors = tensors[5:]
    collect()
    assert 0 < pa.total_allocated_bytes() - baseline < held
    del tensors
    collect()
    assert pa.total_allocated_bytes() == baseline


# ---------------------------------------------------------------------------
# Other producers: nanoarrow and polars.


def test_nanoarrow_inputs() -> None:
    assert torchspark.to_tensor(na.c_array([1, 2, 3], na.int32())).tolist() == [1, 2, 3]
    values, mask = torchspark.to_tensor(na.c_array([1, None, 3], na.int64()), nulls="mask")
    assert values.tolist() == [1, 0, 3] and mask.tolist() == [True, False, True]
    nested = torchspark.to_tensor(na.c_array(pa.array([[1, 2], [3, 4]], pa.list_(pa.int16()))))
    assert nested.dtype == torch.int16 and nested.tolist() == [[1, 2], [3, 4]]
    assert torchspark.to_tensor(na.Array([1.5, 2.5], na.float64())).tolist() == [1.5, 2.5]
    stream = na.c_array_stream(pa.chunked_array([[1, 2], [3]]))
    assert torchspark.to_tensor(stream).tolist() == [1, 2, 3]
    batch = na.c_array(pa.record_batch({"a": [1.0, 2.0], "b": [3, 4]}))
    assert torchspark.gather(batch, ["b", "a"]).tolist() == [[3.0, 1.0], [4.0, 2.0]]


def test_nanoarrow_release_once() -> None:
    tracked = ac.TrackedArray(na.c_array([1.0, 2.0, 3.0], na.float32()))
    t = torchspark.to_tensor(tracked)
    collect()
    assert tracked.release_calls == (0, 0)
    assert t.tolist() == [1.0, 2.0, 3.0]
    del t
    collect()
    assert tracked.release_calls == (1, 1)
    stream = ac.TrackedStream(na.c_array_stream(pa.chunked_array([[1, 2], [3], [4]])))
    assert torchspark.to_tensor(stream).tolist() == [1, 2, 3, 4]
    collect()
    assert stream.calls == 1 and [c.calls for c in stream.arrays] == [1, 1, 1]


def test_nanoarrow_chunked_array() -> None:
    chunked = na.Array(pa.chunked_array([[1, 2], [3]]))
    assert torchspark.to_tensor(chunked).tolist() == [1, 2, 3]


def test_object_with_both_protocols_is_imported_once() -> None:
    source = pa.chunked_array([[1.0, 2.0, 3.0]])
    array = ac.TrackedArray(source.chunk(0))
    stream = ac.TrackedStream(source)

    class Both:
        def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]:
            return array.__arrow_c_array__()

        def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
            return stream.__arrow_c_stream__()

    t = torchspark.to_tensor(Both())
    assert t.tolist() == [1.0, 2.0, 3.0]
    del t
    collect()
    used_array = not array.array.view.release  # moved out by the consumer
    used_stream = not stream.stream.view.release
    assert used_array != used_stream  # exactly one protocol was used
    if used_array:
        assert array.release_calls == (1, 1)
        stream.stream.discard()
    else:
        assert stream.calls == 1 and [c.calls for c in stream.arrays] == [1]
        array.discard()


def test_polars_inputs() -> None:
    assert torchspark.to_tensor(pl.Series("x", [1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]
    lists = torchspark.to_tensor(pl.Series("y", [[1.0, 2.0], [3.0, 4.0]]))
    assert lists.dtype == torch.float64 and lists.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    fixed = torchspark.to_tensor(pl.Series("z", [[1, 2], [3, 4]], dtype=pl.Array(pl.Int32, 2)))
    assert fixed.dtype == torch.int32 and fixed.tolist() == [[1, 2], [3, 4]]
    filled = torchspark.to_tensor(pl.Series("n", [1, None, 3]), nulls="fill", fill=-1)
    assert filled.tolist() == [1, -1, 3]
    df = pl.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]})
    assert torchspark.gather(df, ["b", "a"]).tolist() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    out = torchspark.to_tensors(df)
    assert out["a"].tolist() == [1, 2, 3] and out["b"].dtype == torch.float64
    two_chunks = pl.concat([df, df], rechunk=False)
    assert torchspark.gather(two_chunks).shape == (6, 2)


def test_polars_release_once() -> None:
    stream = ac.TrackedStream(pl.Series("x", np.arange(5.0)))
    t = torchspark.to_tensor(stream)
    collect()
    assert stream.calls == 1 and t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    del t
    collect()
    assert all(c.calls == 1 for c in stream.arrays) and stream.arrays
    assert [c.calls for c in stream.schemas] == [1]
    stream = ac.TrackedStream(pl.DataFrame({"a": [1, 2], "b": [1.5, 2.5]}))
    assert torchspark.gather(stream).tolist() == [[1.0, 1.5], [2.0, 2.5]]
    collect()
    assert stream.calls == 1 and all(c.calls == 1 for c in stream.arrays)


# ---------------------------------------------------------------------------
# Export: tensor -> Arrow.


@pytest.mark.parametrize(
    ("tensor", "fixed"),
    [
        pytest.param(torch.arange(6, dtype=torch.float32), False, id="1d"),
        pytest.param(torch.arange(12, dtype=torch.int64).reshape(4, 3), False, id="list"),
        pytest.param(torch.arange(12, dtype=torch.float64).reshape(4, 3), True, id="fixed"),
        pytest.param(torch.arange(24, dtype=torch.int16).reshape(2, 3, 4), False, id="3d"),
    ],
)
def test_from_tensor_is_zero_copy_and_keeps_memory_alive(tensor: torch.Tensor, fixed: bool) -> None:
    t = tensor.clone()
    expected = t.tolist()
    address = t.data_ptr()
    uses = storage_use_count(t)
    exported = torchspark.from_tensor(t, fixed_size_list=fixed)
    assert data_address(exported) == address
    assert storage_use_count(t) == uses + 1
    del t
    collect()
    for _ in range(3):
        torch.randn(len(expected), 64)  # would reuse freed memory
    assert exported.to_pylist() == expected
    # Re-import: the same memory again.
    again = torchspark.to_tensor(exported)
    assert again.data_ptr() == address
    assert again.tolist() == expected


def test_from_tensor_releases_the_tensor_when_the_array_dies() -> None:
    t = torch.arange(1000, dtype=torch.float32).reshape(100, 10)
    uses = storage_use_count(t)
    for _ in range(50):
        arrays = [torchspark.from_tensor(t), torchspark.from_tensor(t, fixed_size_list=True)]
        batch = torchspark.to_batch({"a": t, "b": t[:, 0].contiguous()})
        assert storage_use_count(t) > uses
        del arrays, batch
    collect()
    assert storage_use_count(t) == uses


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(
            lambda: torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
            [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]],
            id="non_contiguous",
        ),
        pytest.param(lambda: torch.tensor([True, False, True]), [True, False, True], id="bool"),
        pytest.param(
            lambda: torch.tensor([1.5, -2.0], dtype=torch.bfloat16), [1.5, -2.0], id="bfloat16"
        ),
    ],
)
def test_from_tensor_copies_hold_no_reference(
    make: Callable[[], torch.Tensor], expected: list
) -> None:
    t = make()
    uses = storage_use_count(t)
    exported = torchspark.from_tensor(t)
    assert data_address(exported) != t.data_ptr()
    assert storage_use_count(t) == uses  # the export holds its own copy
    del t
    collect()
    assert exported.to_pylist() == expected


def test_dropped_export_capsules_do_not_leak() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    uses = storage_use_count(t)
    export = torchspark._C.TensorExport(t)
    uses_with_export = storage_use_count(t)
    for _ in range(50):
        capsules = export.__arrow_c_array__()
        assert storage_use_count(t) == uses_with_export + 1
        del capsules
        assert storage_use_count(t) == uses_with_export
    del export
    collect()
    assert storage_use_count(t) == uses


def test_taken_export_releases_once_and_marks_released() -> None:
    t = torch.arange(8, dtype=torch.int32)
    uses = storage_use_count(t)
    schema_capsule, array_capsule = torchspark._C.TensorExport(t).__arrow_c_array__()
    schema = ac.take(schema_capsule, ac.ArrowSchema)
    array = ac.take(array_capsule, ac.ArrowArray)
    assert schema.format == b"i" and schema.n_children == 0
    assert array.length == 8 and array.null_count == 0 and array.n_buffers == 2
    assert array.buffers[1] == t.data_ptr()
    del schema_capsule, array_capsule  # their structs were moved out: nothing to release
    collect()
    assert storage_use_count(t) == uses + 1
    ac.release(array)
    assert not array.release
    assert storage_use_count(t) == uses
    ac.release(array)  # release is NULL now: nothing happens
    ac.release(schema)
    assert not schema.release


def test_taken_nested_export_structure() -> None:
    t = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    schema_capsule, array_capsule = torchspark._C.TensorExport(t).__arrow_c_array__()
    schema = ac.take(schema_capsule, ac.ArrowSchema)
    array = ac.take(array_capsule, ac.ArrowArray)
    assert schema.format == b"+l" and schema.n_children == 1
    assert schema.children[0].contents.format == b"g"
    child = array.children[0].contents
    assert array.length == 3 and child.length == 6
    offsets = ctypes.cast(array.buffers[1], ctypes.POINTER(ctypes.c_int32))
    assert [offsets[i] for i in range(4)] == [0, 2, 4, 6]
    assert child.buffers[1] == t.data_ptr()
    ac.release(array)
    ac.release(schema)
    assert not array.release and not schema.release


@pytest.mark.parametrize(
    ("tensor", "error", "match"),
    [
        pytest.param(
            torch.zeros(2, dtype=torch.complex64), TypeError, "no Arrow type", id="complex"
        ),
        pytest.param(torch.tensor(1.0), ValueError, "0-d", id="0d"),
    ],
)
def test_export_errors_do_not_leak(
    tensor: torch.Tensor, error: type[Exception], match: str
) -> None:
    uses = storage_use_count(tensor)
    export = torchspark._C.TensorExport(tensor)
    for _ in range(10):
        with pytest.raises(error, match=match):
            export.__arrow_c_array__()
    del export
    collect()
    assert storage_use_count(tensor) == uses
