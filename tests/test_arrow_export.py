"""torchspark.from_tensor / to_batch: tensor -> Arrow, checked against pyarrow."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark

PRIMITIVES = [
    (torch.int8, pa.int8()),
    (torch.int16, pa.int16()),
    (torch.int32, pa.int32()),
    (torch.int64, pa.int64()),
    (torch.uint8, pa.uint8()),
    (torch.uint16, pa.uint16()),
    (torch.uint32, pa.uint32()),
    (torch.uint64, pa.uint64()),
    (torch.float16, pa.float16()),
    (torch.float32, pa.float32()),
    (torch.float64, pa.float64()),
]


def data_address(arr: pa.Array) -> int:
    return arr.buffers()[-1].address


@pytest.mark.parametrize(("dtype", "arrow_type"), PRIMITIVES, ids=lambda x: str(x))
def test_1d_primitive_zero_copy(dtype, arrow_type):
    t = torch.arange(0, 50).to(dtype)
    arr = torchspark.from_tensor(t)
    assert arr.type == arrow_type
    assert arr.null_count == 0 and len(arr) == 50
    assert data_address(arr) == t.data_ptr()
    np.testing.assert_array_equal(arr.to_numpy(), t.numpy())


def test_2d_is_list_with_offsets():
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    arr = torchspark.from_tensor(t)
    assert arr.type == pa.list_(pa.float32())
    assert arr.offsets.to_pylist() == [0, 3, 6, 9, 12]
    assert arr.values.buffers()[1].address == t.data_ptr()
    assert arr.to_pylist() == t.tolist()


def test_fixed_size_list_option():
    t = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    arr = torchspark.from_tensor(t, fixed_size_list=True)
    assert arr.type == pa.list_(pa.float64(), 3)
    assert arr.values.buffers()[1].address == t.data_ptr()
    assert arr.to_pylist() == t.tolist()


@pytest.mark.parametrize("fixed", [False, True])
def test_3d_and_4d_nested(fixed):
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.int32).reshape(2, 3, 4, 5)
    arr = torchspark.from_tensor(t, fixed_size_list=fixed)
    assert arr.to_pylist() == t.tolist()
    t3 = t[0]
    assert torchspark.from_tensor(t3, fixed_size_list=fixed).to_pylist() == t3.tolist()


def test_round_trip_through_to_tensor():
    t = torch.randn(100, 8)
    back = torchspark.to_tensor(torchspark.from_tensor(t))
    assert back.data_ptr() == t.data_ptr()
    assert torch.equal(back, t)
    t3 = torch.randn(10, 4, 2)
    assert torch.equal(torchspark.to_tensor(torchspark.from_tensor(t3)), t3)


def test_bool_is_bit_packed():
    t = torch.tensor([True, False, True, True, False, False, False, True, True])
    arr = torchspark.from_tensor(t)
    assert arr.type == pa.bool_()
    assert arr.to_pylist() == t.tolist()
    m = torch.rand(33, 5) > 0.5
    assert torchspark.from_tensor(m).to_pylist() == m.tolist()


def test_bfloat16_becomes_float32_exactly():
    t = torch.randn(64).bfloat16()
    arr = torchspark.from_tensor(t)
    assert arr.type == pa.float32()
    np.testing.assert_array_equal(arr.to_numpy(), t.float().numpy())


def test_non_contiguous_is_made_contiguous():
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    t = base.t()  # [5, 4], not contiguous
    assert torchspark.from_tensor(t).to_pylist() == t.tolist()
    sliced = torch.arange(100, dtype=torch.int64)[10:90:3]
    assert torchspark.from_tensor(sliced).to_pylist() == sliced.tolist()


def test_contiguous_slice_is_zero_copy():
    base = torch.arange(100, dtype=torch.float32)
    view = base[10:30]
    arr = torchspark.from_tensor(view)
    assert data_address(arr) == view.data_ptr()
    assert arr.to_pylist() == view.tolist()


def test_requires_grad_and_inference_tensors():
    w = torch.randn(5, 2, requires_grad=True)
    assert torchspark.from_tensor(w).to_pylist() == w.detach().tolist()
    with torch.inference_mode():
        t = torch.randn(7)
    assert torchspark.from_tensor(t).to_pylist() == t.tolist()


def test_memory_outlives_the_tensor():
    t = torch.arange(1000, dtype=torch.float64) * 0.5
    expected = t.tolist()
    arr = torchspark.from_tensor(t)
    del t
    gc.collect()
    _ = torch.full((1000,), 7.0, dtype=torch.float64)  # reuse freed memory if it were freed
    assert arr.to_pylist() == expected


def test_empty_and_single_row():
    assert len(torchspark.from_tensor(torch.empty(0))) == 0
    arr = torchspark.from_tensor(torch.empty(0, 4))
    assert arr.type == pa.list_(pa.float32()) and len(arr) == 0
    assert torchspark.from_tensor(torch.tensor([[1.0, 2.0]])).to_pylist() == [[1.0, 2.0]]
    zero_width = torchspark.from_tensor(torch.empty(3, 0))
    assert zero_width.to_pylist() == [[], [], []]


@pytest.mark.parametrize(
    ("t", "error", "match"),
    [
        (torch.tensor(1.0), ValueError, "expected at least 1 dimension"),
        (torch.zeros(3, dtype=torch.complex64), torchspark.UnsupportedTypeError, "no Arrow type"),
    ],
)
def test_bad_tensors(t, error, match):
    with pytest.raises(error, match=match):
        torchspark.from_tensor(t)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor, got list"):
        torchspark.from_tensor([1, 2])


def test_capsules_usable_by_other_consumers():
    nanoarrow = pytest.importorskip("nanoarrow")
    t = torch.arange(6, dtype=torch.int32).reshape(3, 2)
    arr = nanoarrow.Array(torchspark._C.TensorExport(t))
    assert arr.to_pylist() == t.tolist()


def test_to_batch_mixes_tensors_and_arrays():
    ids = pa.array([10, 11, 12])
    scores = torch.tensor([0.1, 0.2, 0.3])
    emb = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    batch = torchspark.to_batch({"id": ids, "score": scores, "emb": emb})
    assert batch.schema == pa.schema(
        [("id", pa.int64()), ("score", pa.float32()), ("emb", pa.list_(pa.float32()))]
    )
    assert batch.column("id").to_pylist() == [10, 11, 12]
    assert batch.column("score").buffers()[1].address == scores.data_ptr()
    assert batch.column("emb").to_pylist() == emb.tolist()
    pairs = torchspark.to_batch([("b", scores), ("a", ids)])
    assert pairs.schema.names == ["b", "a"]


def test_to_batch_errors():
    with pytest.raises(ValueError, match="column 'b' has 2 rows but column 'a' has 3"):
        torchspark.to_batch({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(TypeError, match=r"column 'a': expected a torch\.Tensor or pyarrow\.Array"):
        torchspark.to_batch({"a": [1, 2]})


def test_spark_accepts_list_not_fixed_size_list():
    # Spark's mapInArrow rejects fixed_size_list; the default must be list.
    batch = torchspark.to_batch({"v": torch.zeros(2, 3)})
    assert pa.types.is_list(batch.schema.field("v").type)
