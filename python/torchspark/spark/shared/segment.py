"""Shared-memory segments: an Arrow batch or a model's output tensors in an
anonymous memory file (``memfd_create``), passed as a descriptor.

A segment has no name: it goes away when the last descriptor and mapping
close, so a killed process leaves nothing in ``/dev/shm``. Each payload is
written once (:func:`write_batch`: Arrow IPC through the file;
:func:`write_tensors`: raw tensor bytes, 64-byte aligned, into the mapping),
and read zero-copy (:func:`read_batch`: Arrow buffers that
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


def _segment(size: int) -> tuple[int, mmap.mmap]:
    fd = os.memfd_create("torchspark", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, max(size, 1))
        return fd, mmap.mmap(fd, max(size, 1))
    except BaseException:
        os.close(fd)
        raise


def write_batch(batch: pa.RecordBatch) -> tuple[int, int]:
    """``batch`` as an Arrow IPC stream in a new segment: (descriptor, bytes).
    Written through the file (one copy of each buffer, by the kernel)."""
    fd = os.memfd_create("torchspark", os.MFD_CLOEXEC)
    try:
        with pa.OSFile(f"/proc/self/fd/{fd}", mode="w") as sink:
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            size = sink.tell()
    except BaseException:
        os.close(fd)
        raise
    return fd, size


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
        return batches[0]
    except (pa.ArrowException, OSError) as e:  # pyarrow: ArrowInvalid, a short read (OSError)
        raise ProtocolError(f"{what}: not a valid Arrow IPC stream: {e}") from None


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
    fd, mapping = _segment(offset)
    try:
        with mapping:
            for t, place in zip(host, layout, strict=True):
                if t.numel():
                    view = torch.frombuffer(
                        mapping, dtype=t.dtype, count=t.numel(), offset=place["offset"]
                    )
                    view.copy_(t.reshape(-1))
                    del view
    except BaseException:
        os.close(fd)
        raise
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
        except (KeyError, TypeError, ValueError):
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
