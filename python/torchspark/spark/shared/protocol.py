"""The messages between a task and its executor's shared engine: :func:`send`, :func:`receive`.

One message per ``SOCK_SEQPACKET`` record (boundaries kept by the kernel, a
passed file descriptor attached to its record): a fixed header, a JSON
``meta`` part and at most one descriptor (a shared-memory segment, see
:mod:`.segment`). The header::

    magic   4s   b"TSE1"
    kind    B    one of KINDS
    fds     B    descriptors attached (0 or 1)
    spare   H    0
    meta    I    bytes of JSON after the header (at most MAX_META)
    id      Q    the request this message is about (0: none)
    length  Q    bytes of the segment that hold the payload (0 without one)

:func:`receive` trusts nothing it reads: a header that lies about its meta
size, an unknown kind, a descriptor where none belongs (or none where one
must be), a record cut short or too long, or a ``length`` past the end of the
passed segment raises :class:`ProtocolError` naming the field, the expected and
the actual value; descriptors of a refused message are closed.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"TSE1"
HEADER = struct.Struct("<4sBBHIQQ")
MAX_META = 1 << 20  # stats and error texts; payloads travel in segments

# Kinds: client -> server
HELLO = 1  # meta {"secret": hex, "sibling": options or null}
SUBMIT = 2  # id, segment: one Arrow IPC stream (one record batch)
STATS = 3  # id; answered by INFO with the engine's stats and histograms
# server -> client
WELCOME = 10  # meta: what the engine is (pid, format, batch_size, padded, device)
REFUSED = 11  # meta {"error"}; the connection closes
RESULT = 12  # id, segment: the outputs' tensors; meta {"names", "tensors"}
FAILED = 13  # id; meta {"type", "message"}: the request's batch failed
INFO = 14  # id; meta {"stats", "histograms"}

KINDS = {
    HELLO: "HELLO",
    SUBMIT: "SUBMIT",
    STATS: "STATS",
    WELCOME: "WELCOME",
    REFUSED: "REFUSED",
    RESULT: "RESULT",
    FAILED: "FAILED",
    INFO: "INFO",
}
WITH_SEGMENT = {SUBMIT, RESULT}  # the kinds that carry exactly one descriptor


class ProtocolError(ConnectionError):
    """A message that breaks the protocol (truncated, lying, unknown)."""


@dataclass
class Message:
    kind: int
    id: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    fd: int | None = None  # owned by the receiver: close it (or hand it on)
    length: int = 0

    @property
    def name(self) -> str:
        return KINDS.get(self.kind, str(self.kind))


def send(
    sock: socket.socket,
    kind: int,
    request: int = 0,
    meta: dict[str, Any] | None = None,
    fd: int | None = None,
    length: int = 0,
) -> None:
    """Send one message (the descriptor, if any, is duplicated into the peer;
    the caller still owns ``fd``)."""
    body = json.dumps(meta or {}, separators=(",", ":")).encode()
    if len(body) > MAX_META:
        raise ProtocolError(f"{KINDS[kind]}: meta of {len(body)} bytes, at most {MAX_META}")
    fds = [] if fd is None else [fd]
    header = HEADER.pack(MAGIC, kind, len(fds), 0, len(body), request, length)
    sock.sendmsg(
        [header + body],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [],
    )


def receive(sock: socket.socket) -> Message | None:
    """The next message, or None at the end of the connection (the peer closed)."""
    size = HEADER.size + MAX_META
    data, ancillary, flags, _ = sock.recvmsg(
        size + 1, socket.CMSG_SPACE(4 * array.array("i").itemsize)
    )
    fds = _descriptors(ancillary)
    try:
        if not data and not fds:
            return None
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > size:
            raise ProtocolError(
                f"message too long: more than {size} bytes or descriptors cut (flags {flags:#x})"
            )
        return parse(data, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def parse(data: bytes, fds: list[int]) -> Message:
    """One received record and its descriptors as a :class:`Message` (raises
    :class:`ProtocolError` on anything malformed; closes nothing)."""
    if len(data) < HEADER.size:
        raise ProtocolError(f"header: expected {HEADER.size} bytes, got {len(data)}")
    magic, kind, count, _, meta_size, request, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"magic: expected {MAGIC!r}, got {magic!r}")
    if kind not in KINDS:
        raise ProtocolError(f"kind: expected one of {sorted(KINDS)}, got {kind}")
    name = KINDS[kind]
    if meta_size != len(data) - HEADER.size:
        raise ProtocolError(
            f"{name}: header says {meta_size} bytes of meta, the message holds "
            f"{len(data) - HEADER.size}"
        )
    expected = 1 if kind in WITH_SEGMENT else 0
    if count != len(fds) or count != expected:
        raise ProtocolError(
            f"{name}: expected {expected} descriptor(s), header says {count}, got {len(fds)}"
        )
    try:
        meta = json.loads(data[HEADER.size :]) if meta_size else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"{name}: meta is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"{name}: meta must be a JSON object, got {type(meta).__name__}")
    fd = fds[0] if fds else None
    if fd is not None:
        size = os.fstat(fd).st_size
        if not 0 < length <= size:
            raise ProtocolError(
                f"{name} request {request}: length {length} outside the segment's "
                f"{size} bytes (expected 1..{size})"
            )
    elif length:
        raise ProtocolError(f"{name}: length {length} without a segment")
    return Message(kind, request, meta, fd, length)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    return fds
