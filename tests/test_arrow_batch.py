"""Output batches (torchspark._C.BatchExport): passed-through input columns
re-exported zero-copy beside tensors, against pyarrow's own assembly."""

from __future__ import annotations

import gc

import pyarrow as pa
import pytest
import torch

from torchspark import _C


def batch_of(export: _C.BatchExport) -> pa.RecordBatch:
    return pa.record_batch(export)


@pytest.fixture
def source() -> pa.RecordBatch:
    field = pa.field("label", pa.string(), metadata={b"origin": b"test", b"k": b""})
    return pa.record_batch(
        [
            pa.array([1, 2, None, 4, 5], pa.int64()),
            pa.array(["a", "bb", None, "", "eeee"]),
            pa.array([[1.0], [], None, [2.0, 3.0], [4.0]], pa.list_(pa.float32())),
            pa.array(["x", "y", "x", None, "y"]).dictionary_encode(),
            pa.array([{"p": 1, "q": "u"}, None, {"p": 3, "q": None}, {"p": 4, "q": "w"}, None]),
        ],
        schema=pa.schema(
            [
                pa.field("id", pa.int64()),
                field,
                pa.field("vec", pa.list_(pa.float32())),
                pa.field("cat", pa.dictionary(pa.int32(), pa.string())),
                pa.field("rec", pa.struct([("p", pa.int64()), ("q", pa.string())])),
            ]
        ),
    )


def test_kept_columns_and_tensors_equal_pyarrows_batch(source):
    keep = ["id", "label", "vec", "cat", "rec"]
    score = torch.arange(5, dtype=torch.float32) / 2
    emb = torch.arange(15, dtype=torch.float64).view(5, 3)
    flag = torch.tensor([True, False, True, True, False])
    out = batch_of(_C.BatchExport(source, keep, ["score", "emb", "flag"], [score, emb, flag]))
    expected = pa.RecordBatch.from_arrays(
        [source.column(k) for k in keep]
        + [
            pa.array(score.numpy()),
            pa.array(emb.tolist(), pa.list_(pa.float64(), 3)).cast(pa.list_(pa.float64())),
            pa.array(flag.numpy()),
        ],
        schema=pa.schema(
            [source.schema.field(k) for k in keep]
            + [
                pa.field("score", pa.float32(), nullable=True),
                pa.field("emb", pa.list_(pa.float64())),
                pa.field("flag", pa.bool_()),
            ]
        ),
    )
    assert out.schema.names == expected.schema.names
    assert out.schema.field("label").metadata == {b"origin": b"test", b"k": b""}
    for name in expected.schema.names:
        assert out.column(name).equals(expected.column(name)), name
        assert out.column(name).to_pylist() == expected.column(name).to_pylist(), name
    out.validate(full=True)


def test_zero_copy_both_ways(source):
    score = torch.randn(5)
    out = batch_of(_C.BatchExport(source, ["id", "label"], ["score"], [score]))
    assert out.column("id").buffers()[1].address == source.column("id").buffers()[1].address
    assert out.column("label").buffers()[2].address == source.column("label").buffers()[2].address
    assert out.column("score").buffers()[1].address == score.data_ptr()


def test_a_sliced_input_keeps_its_rows(source):
    part = source.slice(1, 3)
    out = batch_of(_C.BatchExport(part, ["id", "label", "vec", "rec"], ["n"], [torch.ones(3)]))
    for name in ("id", "label", "vec", "rec"):
        assert out.column(name).to_pylist() == part.column(name).to_pylist(), name
    assert out.column("id").null_count == 1  # recounted by the consumer
    out.validate(full=True)


def test_the_input_lives_as_long_as_the_output(source):
    pool = pa.default_memory_pool()
    gc.collect()
    before = pool.bytes_allocated()
    big = pa.record_batch({"x": pa.array(range(100_000), pa.int64())})
    allocated = pool.bytes_allocated() - before
    assert allocated >= 800_000
    out = batch_of(_C.BatchExport(big, ["x"], [], []))
    del big
    gc.collect()
    assert pool.bytes_allocated() - before >= 800_000  # held by the output
    assert out.column("x")[99_999].as_py() == 99_999
    del out
    gc.collect()
    assert pool.bytes_allocated() - before < 800_000


def test_tensors_only_and_zero_rows(source):
    out = batch_of(_C.BatchExport(None, [], ["a"], [torch.arange(3)]))
    assert out.column("a").to_pylist() == [0, 1, 2]
    empty = source.slice(0, 0)
    out = batch_of(_C.BatchExport(empty, ["id", "label"], ["s"], [torch.empty(0)]))
    assert out.num_rows == 0 and out.schema.names == ["id", "label", "s"]


def test_errors_name_the_column(source):
    with pytest.raises(ValueError, match=r"output column 'score' has shape \[4\]; expected 5 rows"):
        batch_of(_C.BatchExport(source, ["id"], ["score"], [torch.zeros(4)]))
    with pytest.raises(ValueError, match=r"column 'nope'"):
        _C.BatchExport(source, ["nope"], [], [])
    with pytest.raises(ValueError, match=r"2 names for 1 tensors"):
        _C.BatchExport(source, [], ["a", "b"], [torch.zeros(5)])
    with pytest.raises(ValueError, match=r"columns to keep need an input batch"):
        _C.BatchExport(None, ["id"], [], [])
