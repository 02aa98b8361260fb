"""Coverage-guided fuzzer (atheris) of the shared engine's message reader.

The shared engine (``torchspark.spark.shared``) reads what a task sends it: a
``SOCK_SEQPACKET`` record (header + JSON meta) with at most one passed
descriptor, a memfd segment holding an Arrow IPC stream (``SUBMIT``) or the
output tensors a layout in the meta describes (``RESULT``, read by the task).
That reader is Python (``protocol.receive``/``parse``, ``segment.read_batch``,
``segment.read_tensors``), so the fuzzer is atheris over the real code: each
input is sent through a real socket pair, with a real segment attached, and
read back as the engine and the client read it.

Input encoding (so that seeds are exact messages): byte 0 bit 0: attach a
segment; bytes 1-2: the record's length n (little endian, capped at what
remains); the next n bytes: the record (header + meta) as sent; the rest: the
segment's bytes.

Contract: every input either reads back (a batch that validates; tensors
whose every byte is read, so a view past the mapping would fault) or raises
``ProtocolError`` naming what is wrong; anything else is a finding. No
descriptor may leak (checked every 1000 inputs against /proc/self/fd).

    python tests/fuzz/shared_protocol_fuzzer.py --make-seeds tests/fuzz/corpus/shared_protocol
    python tests/fuzz/shared_protocol_fuzzer.py -max_total_time=30 \\
        build/fuzz-corpus/shared_protocol tests/fuzz/corpus/shared_protocol

``.ci/fuzz shared_protocol`` runs it like the native targets.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

import atheris
import pyarrow as pa
import torch

# Coverage of the reader's own modules (pyarrow's and torch's native code is
# not instrumented; what they raise is checked by the contract).
with atheris.instrument_imports(include=["torchspark.spark.shared"]):
    from torchspark.spark.shared import protocol, segment

_SOCKETS = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
_runs = 0
_open_fds = 0


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _exchange(record: bytes, payload: bytes | None) -> protocol.Message | None:
    """``record`` sent as one message (with a segment holding ``payload``) and
    received as the engine receives it."""
    sender, receiver = _SOCKETS
    fd = None
    if payload is not None:
        fd = os.memfd_create("torchspark-fuzz", os.MFD_CLOEXEC)
        os.write(fd, payload)
    try:
        ancillary = (
            [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        )
        sender.sendmsg([record], ancillary)
    finally:
        if fd is not None:
            os.close(fd)  # the peer holds its own copy now
    return protocol.receive(receiver)


def _read(message: protocol.Message) -> None:
    """Read the message's segment as its reader does (which closes it)."""
    if message.fd is None:
        return
    if message.kind == protocol.SUBMIT:
        batch = segment.read_batch(message.fd, message.length, "fuzz")
        for column in batch.columns:
            column.to_pylist()  # touch every value
    elif message.kind == protocol.RESULT:
        tensors = segment.read_tensors(
            message.fd, message.length, message.meta.get("tensors"), "fuzz"
        )
        for t in tensors:
            t.clone()  # reads every byte of the view
    else:  # parse refuses a descriptor on other kinds; if one came, it is a finding
        os.close(message.fd)
        raise AssertionError(f"{message.name} came with a descriptor")


def test_one_input(data: bytes) -> None:
    global _runs, _open_fds
    if len(data) < 3:
        return
    attach = bool(data[0] & 1)
    n = min(int.from_bytes(data[1:3], "little"), len(data) - 3)
    record, payload = data[3 : 3 + n], data[3 + n :]
    if not record:
        return  # an empty record reads as the peer's end of connection
    try:
        message = _exchange(record, payload if attach else None)
        assert message is not None, "a non-empty record read as the end of the connection"
        _read(message)
    except protocol.ProtocolError as e:
        assert str(e), "a ProtocolError without a message"
    _runs += 1
    if _runs == 1:
        _open_fds = _fd_count()
    elif _runs % 1000 == 0 and _fd_count() > _open_fds + 4:
        raise AssertionError(f"descriptors leak: {_fd_count()} open, {_open_fds} at the start")


def _message(kind: int, meta: dict | bytes, length: int, fds: int) -> bytes:
    import json

    body = meta if isinstance(meta, bytes) else json.dumps(meta, separators=(",", ":")).encode()
    return protocol.HEADER.pack(protocol.MAGIC, kind, fds, 0, len(body), 7, length) + body


def _encode(record: bytes, payload: bytes | None) -> bytes:
    return (
        bytes([payload is not None]) + len(record).to_bytes(2, "little") + record + (payload or b"")
    )


def make_seeds(directory: str) -> None:
    """Valid messages of each kind (and a few lying ones) as seeds."""
    os.makedirs(directory, exist_ok=True)
    batch = pa.record_batch(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "x": pa.array([[1.0, 2.0], None, [3.0]], pa.list_(pa.float32())),
            "s": pa.array(["a", None, "ccc"]),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    ipc = sink.getvalue().to_pybytes()
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensor_bytes = t.numpy().tobytes() + bytes(16)
    layout = [
        {"dtype": "float32", "shape": [3, 4], "offset": 0},
        {"dtype": "int64", "shape": [0], "offset": 48},
    ]
    seeds = {
        "submit": _encode(_message(protocol.SUBMIT, {}, len(ipc), 1), ipc),
        "submit-short": _encode(_message(protocol.SUBMIT, {}, len(ipc), 1), ipc[: len(ipc) // 2]),
        "result": _encode(
            _message(protocol.RESULT, {"names": ["p"], "tensors": layout}, len(tensor_bytes), 1),
            tensor_bytes,
        ),
        "hello": _encode(
            _message(protocol.HELLO, {"secret": "00" * 16, "sibling": None}, 0, 0), None
        ),
        "failed": _encode(
            _message(protocol.FAILED, {"type": "ModelError", "message": "x", "request": 7}, 0, 0),
            None,
        ),
        "stats": _encode(_message(protocol.STATS, {}, 0, 0), None),
        "lying-meta": _encode(_message(protocol.STATS, {}, 0, 0)[:-1] + b"}}", None),
        # Found by this fuzzer (fixed in segment.py): an IPC stream whose
        # column name is not UTF-8; a tensor layout with 1e999 (JSON's
        # infinity, which int() cannot take).
        "crash-non-utf8-name": _encode(
            _message(protocol.SUBMIT, {}, len(ipc), 1), ipc.replace(b"id", b"\xff\xfe", 1)
        ),
        "crash-infinite-shape": _encode(
            _message(
                protocol.RESULT,
                b'{"names":["p"],"tensors":[{"dtype":"float32","shape":[1e999],"offset":0}]}',
                len(tensor_bytes),
                1,
            ),
            tensor_bytes,
        ),
    }
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {directory}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        make_seeds(sys.argv[2])
    else:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
