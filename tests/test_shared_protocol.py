"""The shared engine's messages and segments against truncated, lying and
malformed input: every one is a clear ProtocolError, never a read outside
the segment; good ones round-trip exactly (pyarrow / torch as reference)."""

from __future__ import annotations

import array
import os
import socket

import numpy as np
import pyarrow as pa
import pytest
import torch

from torchspark.spark.shared import protocol, segment
from torchspark.spark.shared.protocol import HEADER, MAGIC, ProtocolError


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def memfd(data: bytes) -> int:
    fd = os.memfd_create("test")
    os.write(fd, data)
    return fd


def raw(sock, data: bytes, fds: list[int] = ()) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def header(kind=protocol.SUBMIT, fds=1, meta=0, request=7, length=16) -> bytes:
    return HEADER.pack(MAGIC, kind, fds, 0, meta, request, length)


def batch(rows: int = 100) -> pa.RecordBatch:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(rows * 4).astype("float32")
    x = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * 4 + 1, 4, dtype=np.int32)), values)
    return pa.record_batch(
        [pa.array(np.arange(rows)), x, pa.array([f"r{i}" for i in range(rows)])],
        names=["id", "x", "s"],
    )


def test_a_message_with_a_segment_round_trips(pair):
    a, b = pair
    fd = memfd(b"x" * 64)
    protocol.send(a, protocol.SUBMIT, 42, {"k": [1, 2]}, fd, 64)
    os.close(fd)
    got = protocol.receive(b)
    assert (got.kind, got.id, got.meta, got.length) == (protocol.SUBMIT, 42, {"k": [1, 2]}, 64)
    assert os.pread(got.fd, 64, 0) == b"x" * 64
    os.close(got.fd)
    a.close()
    assert protocol.receive(b) is None  # the peer closed


@pytest.mark.parametrize(
    "data, fds, expected",
    [
        (b"TSE1\x02", 0, "header: expected 28 bytes, got 5"),
        (header()[:-1], 1, "header: expected 28 bytes, got 27"),
        (b"XXXX" + header()[4:], 1, "magic: expected b'TSE1', got b'XXXX'"),
        (header(kind=99), 1, "kind: expected one of"),
        (header(meta=10) + b"{}", 1, "SUBMIT: header says 10 bytes of meta, the message holds 2"),
        (header(meta=2) + b"[]", 1, "SUBMIT: meta must be a JSON object, got list"),
        (header(meta=3) + b"{x}", 1, "SUBMIT: meta is not JSON"),
        (header(fds=0), 0, "SUBMIT: expected 1 descriptor(s), header says 0, got 0"),
        (header(fds=1), 0, "SUBMIT: expected 1 descriptor(s), header says 1, got 0"),
        (header(kind=protocol.STATS, fds=1, length=0), 1, "STATS: expected 0 descriptor(s)"),
        (header(length=17), 1, "SUBMIT request 7: length 17 outside the segment's 16 bytes"),
        (header(length=0), 1, "SUBMIT request 7: length 0 outside the segment's 16 bytes"),
        (header(kind=protocol.STATS, fds=0, length=5), 0, "STATS: length 5 without a segment"),
    ],
)
def test_malformed_messages_are_refused_and_their_descriptors_closed(pair, data, fds, expected):
    a, b = pair
    fd = memfd(b"\0" * 16)
    raw(a, data, [fd] * fds)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError) as info:
        protocol.receive(b)
    assert expected in str(info.value)
    assert set(os.listdir("/proc/self/fd")) <= before  # the received copy is closed
    os.close(fd)


def test_a_message_longer_than_the_limit_is_refused(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    big = b"{" + b" " * (protocol.MAX_META + 10) + b"}"
    try:
        raw(a, header(kind=protocol.STATS, fds=0, meta=len(big), length=0) + big)
    except OSError:
        pytest.skip("this kernel's socket buffers cannot hold a message over the limit")
    with pytest.raises(ProtocolError, match="message too long"):
        protocol.receive(b)
    with pytest.raises(ProtocolError, match="meta of"):
        protocol.send(a, protocol.STATS, meta={"x": "y" * protocol.MAX_META})


def test_a_batch_round_trips_zero_copy_through_a_segment():
    source = batch(1000)
    fd, length = segment.write_batch(source)
    got = segment.read_batch(fd, length)
    assert got.equals(source)
    # zero-copy: the values buffer lies inside the mapping, not in a copy
    values = got.column("x").values.buffers()[1]
    assert values.address != source.column("x").values.buffers()[1].address
    assert got.column("x").values.to_numpy().base is not None
    with pytest.raises(OSError):
        os.fstat(fd)  # the reader closed its descriptor


def test_lying_or_truncated_batches_are_refused():
    source = batch(200)
    fd, length = segment.write_batch(source)
    duplicate = os.dup(fd)
    with pytest.raises(ProtocolError, match=f"length {length + 1} outside the segment's {length}"):
        segment.read_batch(fd, length + 1)
    for cut in (8, 100, length // 2):
        with pytest.raises(ProtocolError, match=r"not a valid Arrow IPC stream|expected 1 record"):
            segment.read_batch(os.dup(duplicate), cut)
    # A list offset rewritten to point past the values: full validation catches it.
    data = bytearray(os.pread(duplicate, length, 0))
    offsets = np.arange(0, 201 * 4, 4, dtype=np.int32).tobytes()
    at = bytes(data).find(offsets)
    assert at > 0
    data[at + 4 * 100 : at + 4 * 101] = np.int32(1 << 30).tobytes()
    with pytest.raises(ProtocolError, match="not a valid Arrow IPC stream"):
        segment.read_batch(memfd(bytes(data)), length)
    os.close(duplicate)


def test_two_batches_in_one_segment_are_refused():
    source = batch(10)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, source.schema) as writer:
        writer.write_batch(source)
        writer.write_batch(source)
    data = sink.getvalue().to_pybytes()
    with pytest.raises(ProtocolError, match="expected 1 record batch, got 2"):
        segment.read_batch(memfd(data), len(data))


def test_a_column_name_that_is_not_utf8_is_refused():
    # Found by tests/fuzz/shared_protocol_fuzzer.py: validate() does not look
    # at names, and reading one raised UnicodeDecodeError later.
    source = pa.record_batch({"id": pa.array([1, 2], pa.int64())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, source.schema) as writer:
        writer.write_batch(source)
    data = sink.getvalue().to_pybytes().replace(b"id", b"\xff\xfe", 1)
    with pytest.raises(ProtocolError, match="a field name is not UTF-8"):
        segment.read_batch(memfd(data), len(data))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_tensors_round_trip(dtype):
    tensors = [
        torch.randn(7, 3).to(dtype),
        torch.arange(7).to(dtype),
        torch.zeros(0, 2, dtype=dtype),
        torch.randn(4, 2, 5).to(dtype)[:, 1],  # not contiguous
    ]
    fd, length, layout = segment.write_tensors(tensors)
    got = segment.read_tensors(fd, length, layout)
    for a, b in zip(tensors, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "layout, expected",
    [
        ([{"dtype": "float32", "shape": [100, 4], "offset": 0}], "ends at 1600"),
        ([{"dtype": "float32", "shape": [2], "offset": 60}], "ends at 68"),
        ([{"dtype": "float32", "shape": [-2, 3], "offset": 0}], "tensor 0"),
        ([{"dtype": "float32", "shape": [2], "offset": -8}], "tensor 0"),
        ([{"dtype": "complex64", "shape": [2], "offset": 0}], "bad description"),
        ([{"shape": [2], "offset": 0}], "bad description"),
        # Found by the fuzzer: JSON's 1e999 is infinity, which int() cannot take.
        ([{"dtype": "float32", "shape": [float("inf")], "offset": 0}], "bad description"),
        ({"dtype": "float32"}, "tensors must be a list"),
    ],
)
def test_lying_tensor_layouts_are_refused(layout, expected):
    fd, length, _ = segment.write_tensors([torch.ones(16)])
    assert length == 64
    with pytest.raises(ProtocolError, match=expected):
        segment.read_tensors(fd, length, layout)
