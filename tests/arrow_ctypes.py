"""ctypes helpers for the Arrow C Data / C Stream Interface in tests (not a test file).

What the tests need that pyarrow does not give them directly:

* the three C structs (:class:`ArrowSchema`, :class:`ArrowArray`,
  :class:`ArrowArrayStream`) and :func:`export` / :func:`export_stream` to fill
  them from pyarrow (``_export_to_c``);
* :func:`capsule`: a PyCapsule with the PyCapsule-protocol name around a struct,
  whose destructor releases the struct if no consumer took it (moved it out);
* :class:`Counted`: a producer's struct handed to the consumer as a *copy*
  whose ``release`` is a Python callback that counts its calls, marks the
  consumer's struct released and releases the saved original (so the
  producer's memory is freed). Tests corrupt that copy (:meth:`Counted.buffers`,
  :meth:`Counted.child`, ...): the consumer sees the corruption while the
  producer's own release still walks the untouched original;
* :class:`TrackedArray` / :class:`TrackedStream`: objects with
  ``__arrow_c_array__`` / ``__arrow_c_stream__`` built on those.

Every struct the consumer can still point at is kept alive by a module-level
registry, and every ctypes callback is a module-level object, so nothing is
collected while C code may call it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
from collections.abc import Callable
from typing import Any

# ---------------------------------------------------------------------------
# The structs (Arrow C Data Interface, ABI-stable). Function pointers and
# private data are void pointers: NULL reads as None, and we can store our
# callbacks' addresses and call the producer's through the typed prototypes.


class ArrowSchema(ctypes.Structure):
    pass


ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_void_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowSchema))),
    ("dictionary", ctypes.POINTER(ArrowSchema)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class ArrowArray(ctypes.Structure):
    pass


ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowArray))),
    ("dictionary", ctypes.POINTER(ArrowArray)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class ArrowArrayStream(ctypes.Structure):
    _fields_ = [
        ("get_schema", ctypes.c_void_p),
        ("get_next", ctypes.c_void_p),
        ("get_last_error", ctypes.c_void_p),
        ("release", ctypes.c_void_p),
        ("private_data", ctypes.c_void_p),
    ]


Struct = ArrowSchema | ArrowArray | ArrowArrayStream

SCHEMA_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowSchema))
ARRAY_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowArray))
STREAM_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowArrayStream))
GET_SCHEMA = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ArrowArrayStream), ctypes.POINTER(ArrowSchema)
)
GET_NEXT = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ArrowArrayStream), ctypes.POINTER(ArrowArray)
)
GET_LAST_ERROR = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ArrowArrayStream))

_RELEASE_PROTOTYPE = {
    ArrowSchema: SCHEMA_RELEASE,
    ArrowArray: ARRAY_RELEASE,
    ArrowArrayStream: STREAM_RELEASE,
}

CAPSULE_NAME = {
    ArrowSchema: b"arrow_schema",
    ArrowArray: b"arrow_array",
    ArrowArrayStream: b"arrow_array_stream",
}


def address(struct: ctypes.Structure) -> int:
    return ctypes.addressof(struct)


def copy_struct(struct: Struct) -> Struct:
    """A bitwise copy (what a consumer's "move" makes)."""
    return type(struct).from_buffer_copy(struct)


def release(struct: Struct) -> None:
    """Calls struct.release(&struct) if it is not NULL (a producer callback)."""
    if struct.release:
        _RELEASE_PROTOTYPE[type(struct)](struct.release)(ctypes.byref(struct))


# ---------------------------------------------------------------------------
# Exporting from pyarrow.


def export(obj: Any) -> tuple[ArrowSchema, ArrowArray]:
    """Exports a pyarrow Array or RecordBatch into fresh structs (caller releases)."""
    schema = ArrowSchema()
    array = ArrowArray()
    obj._export_to_c(address(array), address(schema))
    return schema, array


def export_stream(obj: Any) -> ArrowArrayStream:
    """Exports a pyarrow RecordBatchReader (``_export_to_c``) or any object with
    ``__arrow_c_stream__`` (moved out of its capsule) into a fresh stream struct,
    which the caller releases."""
    if hasattr(obj, "_export_to_c") and hasattr(obj, "read_next_batch"):
        stream = ArrowArrayStream()
        obj._export_to_c(address(stream))
        return stream
    return take(obj.__arrow_c_stream__(), ArrowArrayStream)


_PyCapsule_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_PyCapsule_GetPointer.restype = ctypes.c_void_p
_PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def take(capsule: Any, kind: type[Struct]) -> Struct:
    """Moves the struct out of a PyCapsule, as a consumer does (source marked released)."""
    source = kind.from_address(_PyCapsule_GetPointer(capsule, CAPSULE_NAME[kind]))
    assert source.release, "the capsule's struct was already released"
    moved = copy_struct(source)
    source.release = None
    return moved


# ---------------------------------------------------------------------------
# PyCapsules. The capsule points at the struct itself; a consumer moves it out
# (setting its release to NULL). The destructor releases what was not taken.

_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]

# id(capsule) (the PyObject address) -> the struct it points at.
_CAPSULE_TARGETS: dict[int, Struct] = {}


def _release_any(struct: Struct) -> None:
    # Our own counting callbacks are called directly (no trip through C).
    key = struct.private_data
    if struct.release and struct.release == _OUR_RELEASE.get(type(struct)):
        _COUNTED[key]._on_release(struct)
    else:
        release(struct)


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule_address: int) -> None:
    struct = _CAPSULE_TARGETS.pop(capsule_address, None)
    if struct is not None and struct.release:
        _release_any(struct)


def capsule(struct: Struct) -> Any:
    """A PyCapsule named as the PyCapsule protocol wants, pointing at `struct`."""
    result = _PyCapsule_New(address(struct), CAPSULE_NAME[type(struct)], _capsule_destructor)
    _CAPSULE_TARGETS[id(result)] = struct
    return result


class CapsuleProducer:
    """Returns the same capsules on every call (a capsule passed twice)."""

    def __init__(self, *, array: tuple[Any, Any] | None = None, stream: Any = None) -> None:
        if array is not None:
            self.__arrow_c_array__ = lambda requested_schema=None: array
        if stream is not None:
            self.__arrow_c_stream__ = lambda requested_schema=None: stream


# ---------------------------------------------------------------------------
# Counting copies.

_COUNTED: dict[int, Counted] = {}
_KEYS = itertools.count(1)


class Counted:
    """One producer struct, handed to the consumer as a counting copy (`view`).

    ``view`` is what the consumer sees (corrupt it freely); ``original`` is what
    is released, once, when the consumer (or the capsule destructor) calls the
    view's release. ``calls`` counts release calls (a correct consumer makes
    exactly one). Entries are never dropped, so a second (buggy) release call
    is still counted rather than crashing.
    """

    def __init__(self, original: Struct) -> None:
        assert original.release, "expected a live struct"
        self.original = original
        self.calls = 0
        self.key = next(_KEYS)
        self.view = copy_struct(original)
        self.view.release = _OUR_RELEASE[type(original)]
        self.view.private_data = self.key
        self._keep: list[Any] = []  # copies the view (and its copied children) point at
        self._children: dict[int, Any] = {}
        _COUNTED[self.key] = self

    # -- release --

    @property
    def released(self) -> bool:
        """Whether the producer's original was released."""
        return not self.original.release

    def _on_release(self, struct: Struct) -> None:
        self.calls += 1
        struct.release = None
        release(self.original)

    def capsule(self) -> Any:
        return capsule(self.view)

    def discard(self) -> None:
        """Releases the view if no consumer took it (test clean-up; counts as a call)."""
        if self.view.release:
            self._on_release(self.view)
        elif not self.released:  # the view was marked released by hand: free the original
            release(self.original)

    # -- corruption helpers (all act on copies; the original stays intact) --

    def keep(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj

    def buffers(self, struct: ArrowArray | None = None, n: int | None = None) -> Any:
        """Gives `struct` (default: the view) its own copy of its buffer pointers."""
        struct = self.view if struct is None else struct
        n = max(struct.n_buffers, n or 0, 1)
        table = (ctypes.c_void_p * n)()
        for i in range(min(struct.n_buffers, n)):
            table[i] = struct.buffers[i]
        struct.buffers = ctypes.cast(table, ctypes.POINTER(ctypes.c_void_p))
        return self.keep(table)

    def replace_buffer(self, index: int, data: Any, struct: ArrowArray | None = None) -> Any:
        """Points buffer `index` of `struct` at `data` (a ctypes array, kept alive)."""
        struct = self.view if struct is None else struct
        table = self.buffers(struct)
        table[index] = ctypes.addressof(data)
        return self.keep(data)

    def children(self, struct: Any = None, n: int | None = None) -> Any:
        """Gives `struct` (default: the view) its own copy of its children table,
        `n` entries long (default n_children; entries past the original are NULL).
        Returns the table; n_children is left as it was."""
        struct = self.view if struct is None else struct
        kind = type(struct)
        n = struct.n_children if n is None else n
        table = (ctypes.POINTER(kind) * max(n, 1))()
        for i in range(min(struct.n_children, n)):
            table[i] = struct.children[i]
        struct.children = ctypes.cast(table, ctypes.POINTER(ctypes.POINTER(kind)))
        self._children[address(struct)] = table
        return self.keep(table)

    def child(self, index: int, struct: Any = None) -> Any:
        """Copies child `index` of `struct` (default: the view) into a table of its
        own and returns the copy, which the consumer then sees."""
        struct = self.view if struct is None else struct
        table = self._children.get(address(struct))
        if table is None:
            table = self.children(struct)
        child = self.keep(copy_struct(table[index].contents))
        table[index] = ctypes.pointer(child)
        return child

    def dictionary(self, struct: Any = None) -> Any:
        """Copies the dictionary of `struct` (default: the view); returns the copy."""
        struct = self.view if struct is None else struct
        copy = self.keep(copy_struct(struct.dictionary.contents))
        struct.dictionary = ctypes.pointer(copy)
        return copy

    def set_format(self, fmt: bytes | None, struct: ArrowSchema | None = None) -> None:
        struct = self.view if struct is None else struct
        struct.format = self.keep(fmt) if fmt is not None else None


def _dispatch_release(ptr: Any) -> None:
    try:
        _COUNTED[ptr.contents.private_data]._on_release(ptr.contents)
    except Exception as exc:  # never let an exception unwind into C
        _CALLBACK_ERRORS.append(exc)


_CALLBACK_ERRORS: list[BaseException] = []
_schema_release_cb = SCHEMA_RELEASE(_dispatch_release)
_array_release_cb = ARRAY_RELEASE(_dispatch_release)
_stream_release_cb = STREAM_RELEASE(_dispatch_release)
_OUR_RELEASE = {
    ArrowSchema: ctypes.cast(_schema_release_cb, ctypes.c_void_p).value,
    ArrowArray: ctypes.cast(_array_release_cb, ctypes.c_void_p).value,
    ArrowArrayStream: ctypes.cast(_stream_release_cb, ctypes.c_void_p).value,
}


def callback_errors() -> list[BaseException]:
    """Exceptions raised inside callbacks (they cannot propagate through C)."""
    return list(_CALLBACK_ERRORS)


# ---------------------------------------------------------------------------
# Producers.


class TrackedArray:
    """A pyarrow Array or RecordBatch (or any ``__arrow_c_array__`` producer's
    export) behind ``__arrow_c_array__``, release counted.

    Each ``__arrow_c_array__`` call hands out capsules of the same two views:
    after a consumer moved them, a second call yields released structs.
    """

    def __init__(self, obj: Any) -> None:
        if hasattr(obj, "_export_to_c"):
            schema, array = export(obj)
        else:  # any other producer: move its structs out of its capsules
            schema_capsule, array_capsule = obj.__arrow_c_array__()
            schema = take(schema_capsule, ArrowSchema)
            array = take(array_capsule, ArrowArray)
        self.schema = Counted(schema)
        self.array = Counted(array)

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]:
        return self.schema.capsule(), self.array.capsule()

    @property
    def release_calls(self) -> tuple[int, int]:
        """(schema, array) release calls so far."""
        return self.schema.calls, self.array.calls

    @property
    def released(self) -> bool:
        """Whether the producer's schema and array were both released."""
        return self.schema.released and self.array.released

    def discard(self) -> None:
        """Frees whatever no consumer took (test clean-up)."""
        self.schema.discard()
        self.array.discard()


class TrackedStream:
    """A stream behind ``__arrow_c_stream__`` whose every struct is counted.

    Wraps a producer stream (by default a pyarrow RecordBatchReader's export):
    the consumer gets a stream of our callbacks, each schema and array it reads
    is a :class:`Counted` copy (``schemas``, ``arrays``), and the stream's own
    release is counted in ``calls``. ``on_schema(counted)`` / ``on_array(index,
    counted)`` may corrupt the views before they are handed out; ``fail_at``
    makes get_next fail (EIO, with ``error_message``) on that chunk index and
    ``fail_schema`` makes get_schema fail.
    """

    def __init__(
        self,
        reader: Any,
        *,
        on_schema: Callable[[Counted], None] | None = None,
        on_array: Callable[[int, Counted], None] | None = None,
        fail_at: int | None = None,
        fail_schema: bool = False,
        error_message: str = "injected failure",
    ) -> None:
        self.stream = Counted(export_stream(reader))
        self.stream.view.get_schema = ctypes.cast(_get_schema_cb, ctypes.c_void_p).value
        self.stream.view.get_next = ctypes.cast(_get_next_cb, ctypes.c_void_p).value
        self.stream.view.get_last_error = ctypes.cast(_get_last_error_cb, ctypes.c_void_p).value
        _STREAMS[self.stream.key] = self
        self.on_schema = on_schema
        self.on_array = on_array
        self.fail_at = fail_at
        self.fail_schema = fail_schema
        self.error_message = ctypes.create_string_buffer(error_message.encode())
        self.own_error = False
        self.schemas: list[Counted] = []
        self.arrays: list[Counted] = []
        self.next_calls = 0

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.stream.capsule()

    @property
    def calls(self) -> int:
        """Release calls on the stream itself."""
        return self.stream.calls

    # -- the callbacks' bodies (the original stream is the saved pyarrow one) --

    def _get_schema(self, out: Any) -> int:
        if self.fail_schema:
            self.own_error = True
            return errno.EIO
        tmp = ArrowSchema()
        original = self.stream.original
        rc = GET_SCHEMA(original.get_schema)(ctypes.byref(original), ctypes.byref(tmp))
        if rc != 0:
            self.own_error = False
            return rc
        counted = Counted(tmp)
        self.schemas.append(counted)
        if self.on_schema is not None:
            self.on_schema(counted)
        ctypes.memmove(out, address(counted.view), ctypes.sizeof(ArrowSchema))
        return 0

    def _get_next(self, out: Any) -> int:
        index = self.next_calls
        self.next_calls += 1
        if self.fail_at is not None and index == self.fail_at:
            self.own_error = True
            return errno.EIO
        tmp = ArrowArray()
        original = self.stream.original
        rc = GET_NEXT(original.get_next)(ctypes.byref(original), ctypes.byref(tmp))
        if rc != 0:
            self.own_error = False
            return rc
        if not tmp.release:  # end of stream
            ctypes.memmove(out, address(tmp), ctypes.sizeof(ArrowArray))
            return 0
        counted = Counted(tmp)
        self.arrays.append(counted)
        if self.on_array is not None:
            self.on_array(len(self.arrays) - 1, counted)
        ctypes.memmove(out, address(counted.view), ctypes.sizeof(ArrowArray))
        return 0

    def _get_last_error(self) -> int | None:
        if self.own_error:
            return ctypes.addressof(self.error_message)
        original = self.stream.original
        return GET_LAST_ERROR(original.get_last_error)(ctypes.byref(original))


_STREAMS: dict[int, TrackedStream] = {}


def _stream_of(ptr: Any) -> TrackedStream:
    return _STREAMS[ptr.contents.private_data]


def _guarded(fn: Callable[..., Any], on_error: Any) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # never let an exception unwind into C
            _CALLBACK_ERRORS.append(exc)
            return on_error

    return call


_get_schema_cb = GET_SCHEMA(_guarded(lambda ptr, out: _stream_of(ptr)._get_schema(out), errno.EIO))
_get_next_cb = GET_NEXT(_guarded(lambda ptr, out: _stream_of(ptr)._get_next(out), errno.EIO))
_get_last_error_cb = GET_LAST_ERROR(_guarded(lambda ptr: _stream_of(ptr)._get_last_error(), None))
