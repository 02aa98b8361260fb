"""Shared-memory segments: an Arrow batch or a model's output tensors in an
anonymous memory file (``memfd_create``), passed as a descriptor.

A segment has no name: it goes away when the last descriptor and mapping
close, so a killed process leaves nothing in ``/dev/shm``. Each payload is
written once into a mapping (:class:`Segment`: Arrow IPC, in segments a task
reuses, :class:`SegmentPool`; :func:`write_tensors`: raw tensor bytes,
64-byte aligned), and read zero-copy (:func:`read_batch`: Arrow buffers that
point into the mapping; :func:`read_tensors`: tensors over it). Readers own
the descriptor they are given and close it; the mapping lives as long as any
buffer or tensor made from it.

Readers trust nothing: ``length`` is checked against the file's size (a
lying length cannot reach past the mapping), the IPC stream must hold
exactly one record batch and is validated in full (offsets, lengths, UTF-8:
one pass over the data), and each tensor's dtype, shape, offset and size
are checked against the segment before it is viewed.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from typing import Any

import pyarrow as pa
import torch

from .protocol import ProtocolError

ALIGN = 64
DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


class Segment:
    """A writable segment: a memory file and its mapping, reusable (see
    :class:`SegmentPool`). Not thread-safe: one writer at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fd = os.memfd_create("torchspark", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, capacity)
            self._mapping = mmap.mmap(self.fd, capacity)
        except BaseException:
            os.close(self.fd)
            raise
        self._buffer = pa.py_buffer(self._mapping)

    @property
    def mapping(self) -> mmap.mmap:
        return self._mapping

    def write_batch(self, batch: pa.RecordBatch) -> int:
        """Write ``batch`` as an Arrow IPC stream at the start; its length."""
        sink = pa.FixedSizeBufferWriter(self._buffer)
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.tell()

    def close(self) -> None:
        os.close(self.fd)
        # The mapping goes with its last buffer (pyarrow's export of it).
        del self._buffer, self._mapping


def ipc_size(batch: pa.RecordBatch) -> int:
    """Bytes of ``batch`` as an Arrow IPC stream (measured without copying)."""
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, batch.schema) as writer:
        writer.write_batch(batch)
    return mock.size()


class SegmentPool:
    """Segments reused across requests: a fresh memory file costs its pages'
    allocation and zeroing on every write (2.0 ms for 2.7 MB against 0.6 ms
    rewriting an existing one, measured under load here: see
    benchmarks/shared_bench.py), so a task keeps the few it has in flight
    and rewrites them. A segment goes back (:meth:`give_back`) once the
    engine has answered its request: the engine no longer reads it.
    Thread-safe."""

    MIN_CAPACITY = 1 << 16

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._free: list[Segment] = []
        self._lock = threading.Lock()

    def write_batch(self, batch: pa.RecordBatch) -> tuple[Segment, int]:
        """A segment holding ``batch`` (Arrow IPC) and the stream's length."""
        size = ipc_size(batch)
        with self._lock:
            fits = [s for s in self._free if s.capacity >= size]
            segment = min(fits, key=lambda s: s.capacity) if fits else None
            if segment is not None:
                self._free.remove(segment)
        if segment is None:
            segment = Segment(max(self.MIN_CAPACITY, 1 << (size - 1).bit_length()))
        return segment, segment.write_batch(batch)

    def give_back(self, segment: Segment) -> None:
        with self._lock:
            self._free.append(segment)
            extra = (
                sorted(self._free, key=lambda s: s.capacity)[: len(self._free) - self.keep]
                if len(self._free) > self.keep
                else []
            )
            for old in extra:
                self._free.remove(old)
        for old in extra:
            old.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for segment in free:
            segment.close()


def write_batch(batch: pa.RecordBatch) -> tuple[int, int]:
    """``batch`` as an Arrow IPC stream in a new segment of its own:
    (descriptor, bytes); the caller owns the descriptor."""
    segment = Segment(max(ipc_size(batch), 1))
    try:
        length = segment.write_batch(batch)
        return os.dup(segment.fd), length
    finally:
        segment.close()


def _map(fd: int, length: int, what: str) -> mmap.mmap:
    """Map the first ``length`` bytes of ``fd`` and close ``fd``. Writable (a
    private copy-on-write mapping): a model may work in place on its inputs,
    as it may on Spark's buffers; nothing goes back to the writer."""
    try:
        size = os.fstat(fd).st_size
        if not 0 < length <= size:
            raise ProtocolError(f"{what}: length {length} outside the segment's {size} bytes")
        return mmap.mmap(fd, length, flags=mmap.MAP_PRIVATE)
    finally:
        os.close(fd)


def read_batch(fd: int, length: int, what: str = "segment") -> pa.RecordBatch:
    """The one record batch of the IPC stream in ``fd``'s first ``length``
    bytes, zero-copy (its buffers point into the mapping). Closes ``fd``."""
    mapping = _map(fd, length, what)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(mapping))
        batches = list(reader)
        if len(batches) != 1:
            raise ProtocolError(f"{what}: expected 1 record batch, got {len(batches)}")
        batches[0].validate(full=True)
        # validate() does not look at names: a column name that is not UTF-8
        # would fail later, in whatever first reads it (found by
        # tests/fuzz/shared_protocol_fuzzer.py).
        batches[0].schema.names  # noqa: B018 (decodes every name)
        return batches[0]
    except (pa.ArrowException, OSError) as e:  # pyarrow: ArrowInvalid, a short read (OSError)
        raise ProtocolError(f"{what}: not a valid Arrow IPC stream: {e}") from None
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what}: a field name is not UTF-8: {e}") from None


def write_tensors(tensors: list[torch.Tensor]) -> tuple[int, int, list[dict[str, Any]]]:
    """``tensors`` (moved to the CPU, made contiguous) into a new segment:
    (descriptor, bytes, one ``{"dtype", "shape", "offset"}`` per tensor)."""
    host = [t.detach().to("cpu").contiguous() for t in tensors]
    layout: list[dict[str, Any]] = []
    offset = 0
    for t in host:
        if str(t.dtype).removeprefix("torch.") not in DTYPES:
            raise TypeError(f"output {len(layout)}: dtype {t.dtype} cannot be shared")
        layout.append(
            {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "offset": offset}
        )
        offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    segment = Segment(max(offset, 1))
    try:
        for t, place in zip(host, layout, strict=True):
            if t.numel():
                view = torch.frombuffer(
                    segment.mapping, dtype=t.dtype, count=t.numel(), offset=place["offset"]
                )
                view.copy_(t.reshape(-1))
                del view
        fd = os.dup(segment.fd)
    finally:
        segment.close()
    return fd, max(offset, 1), layout


def read_tensors(fd: int, length: int, layout: Any, what: str = "segment") -> list[torch.Tensor]:
    """The tensors ``layout`` describes in ``fd``'s first ``length`` bytes,
    zero-copy (views of the mapping). Closes ``fd``."""
    mapping = _map(fd, length, what)
    if not isinstance(layout, list):
        raise ProtocolError(f"{what}: tensors must be a list, got {type(layout).__name__}")
    tensors = []
    for i, place in enumerate(layout):
        try:
            dtype = DTYPES[place["dtype"]]
            shape = [int(d) for d in place["shape"]]
            offset = int(place["offset"])
        except (KeyError, TypeError, ValueError, OverflowError):  # Overflow: int(1e999)
            raise ProtocolError(f"{what}: tensor {i}: bad description {place!r}") from None
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if min(shape, default=0) < 0 or offset < 0 or offset + nbytes > length:
            raise ProtocolError(
                f"{what}: tensor {i} ({place['dtype']} {shape} at {offset}): expected to end "
                f"within the segment's {length} bytes, ends at {offset + nbytes}"
            )
        if count == 0:
            tensors.append(torch.empty(shape, dtype=dtype))
            continue
        flat = torch.frombuffer(mapping, dtype=dtype, count=count, offset=offset)
        tensors.append(flat.view(shape))
    return tensors
