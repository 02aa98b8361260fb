"""A task's handle on its executor's shared engine: :class:`SharedEngine`.

It offers what the Spark worker uses of :class:`torchspark.Engine`
(``submit``, ``run``, ``map`` with ``return_exceptions``, ``sibling``,
``stats``, ``histograms``, ``close``), so that :func:`..worker.score` runs a
task the same way on either: per-task results, reports, metrics and errors
(the same exception types and texts, sent back by the engine) stay the
task's own.

Each Arrow batch is written once into a shared segment and passed over the
connection; outputs come back as a segment of tensors viewed in place. One
connection per Python worker, reused across its tasks; a reader thread
routes the engine's answers to their requests, so statistics can be asked
for from another thread (live metrics) while a task streams.

If the engine goes away (killed, crashed), every request in flight fails
with :class:`torchspark.EngineClosedError` naming the engine and the
model; the task fails and Spark retries it, and the next connection starts a
fresh engine.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ... import errors
from ...engine import unpack, windowed
from . import protocol, rendezvous, segment

_EXCEPTIONS = {name: getattr(errors, name) for name in errors.__all__} | {
    name: getattr(builtins, name)
    for name in ("ValueError", "TypeError", "RuntimeError", "MemoryError", "IndexError")
}


@dataclass(frozen=True)
class RemoteModel:
    """What the worker reads of the engine's model (``Engine.model``)."""

    format: str


class _Answer:
    """One request's answer, once the reader thread has it."""

    __slots__ = ("_done", "_error", "_value", "rows", "segment")

    def __init__(self, rows: int, segment: segment.Segment | None = None) -> None:
        self.rows = rows
        self.segment = segment  # the request's input, reused once answered
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer from the shared engine after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


class SharedEngine:
    """A connection to a shared engine process (see the module's docstring).

    Made by :func:`.connect`; ``welcome`` is what the engine said of itself.
    """

    def __init__(
        self, sock: socket.socket, welcome: dict[str, Any], label: str, opener: Any = None
    ) -> None:
        self._sock = sock
        self._label = label
        self._opener = opener  # (overrides) -> a sibling connection
        self.pid = int(welcome["pid"])
        self.model = RemoteModel(str(welcome["format"]))
        self.batch_size = int(welcome["batch_size"])
        self.inflight = int(welcome["inflight"])
        self.padded = bool(welcome["padded"])
        self.device = welcome["device"]
        self.threads = int(welcome["threads"])
        self.intra_op_threads = int(welcome["intra_op_threads"])  # the engine's, not this task's
        self._ids = itertools.count(1)
        self._segments = segment.SegmentPool()
        self._send_lock = threading.Lock()
        self._answers: dict[int, _Answer] = {}
        self._answers_lock = threading.Lock()
        self._gone: BaseException | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- what the worker uses --

    def submit(self, batch: Any) -> _Answer:
        """Queue one Arrow record batch in the shared engine; its answer (``result()``)."""
        written, length = self._segments.write_batch(batch)
        return self._request(protocol.SUBMIT, batch.num_rows, written, length)

    def run(self, batch: Any) -> Any:
        """Submit and wait: the outputs of ``batch``."""
        return self.submit(batch).result()

    def map(self, iterable: Iterable[Any], *, return_exceptions: bool = False) -> Iterator[Any]:
        """As :meth:`torchspark.Engine.map`: about ``inflight * batch_size``
        rows of this task in the engine at once, outputs in order. Closed
        early, the requests in flight finish in the engine and their answers
        are dropped as they arrive; the connection stays usable."""
        window = self.inflight * self.batch_size
        yield from windowed(self.submit, iterable, window, return_exceptions)

    def sibling(self, **overrides: Any) -> SharedEngine:
        """A connection to an engine of its own over the same loaded model
        in the engine process (its batches never mix with others' rows)."""
        if self._opener is None:
            raise RuntimeError(f"shared engine for {self._label}: a sibling has no sibling")
        return self._opener(overrides)

    def stats(self) -> dict[str, Any]:
        """The shared engine's statistics (every task's calls, not only this one's)."""
        return self._info()["stats"]

    def histograms(self) -> dict[str, dict[str, Any]]:
        """The shared engine's histograms (every task's calls)."""
        return self._info()["histograms"]

    @property
    def closed(self) -> bool:
        return self._gone is not None

    def close(self, drain: bool = True) -> None:
        """Close the connection (``drain`` is accepted for Engine's signature:
        requests still in flight are dropped by the engine)."""
        del drain
        self._fail(errors.EngineClosedError(f"shared engine for {self._label}: closed"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._reader:
            self._reader.join()
        self._sock.close()
        self._segments.close()

    def __enter__(self) -> SharedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<torchspark SharedEngine pid {self.pid} {self._label} on {self.device}>"

    # -- the connection --

    def _info(self) -> dict[str, Any]:
        return self._request(protocol.STATS, 0).result()

    def _request(
        self, kind: int, rows: int, written: segment.Segment | None = None, length: int = 0
    ) -> _Answer:
        answer = _Answer(rows, written)
        request = next(self._ids)
        with self._answers_lock:
            gone = self._gone
            if gone is None:
                self._answers[request] = answer
        if gone is not None:
            if written is not None:
                self._segments.give_back(written)
            raise gone
        fd = written.fd if written is not None else None
        try:
            with self._send_lock:
                protocol.send(self._sock, kind, request, fd=fd, length=length)
        except OSError as e:
            self._fail(self._crashed(e))
        return answer

    def _read(self) -> None:
        why: BaseException | None = None
        try:
            while True:
                message = protocol.receive(self._sock)
                if message is None:
                    break
                self._route(message)
        except Exception as e:  # a broken message or connection: every request fails
            why = e
        self._fail(self._crashed(why))

    def _route(self, message: protocol.Message) -> None:
        with self._answers_lock:
            answer = self._answers.pop(message.id, None)
        if answer is not None and answer.segment is not None:
            self._segments.give_back(answer.segment)  # answered: the engine is done with it
            answer.segment = None
        if message.kind == protocol.RESULT:
            assert message.fd is not None  # checked by protocol.parse
            what = f"{self._label}: outputs of request {message.id}"
            tensors = segment.read_tensors(
                message.fd, message.length, message.meta.get("tensors"), what
            )
            value: Any = unpack((list(message.meta.get("names", [""] * len(tensors))), tensors))
            error = None
        elif message.kind == protocol.FAILED:
            value, error = None, _rebuilt(message.meta)
        elif message.kind == protocol.INFO:
            value, error = message.meta, None
        else:
            raise protocol.ProtocolError(f"unexpected {message.name} from the engine")
        if answer is not None:
            answer.set(value, error)

    def _crashed(self, why: BaseException | None) -> errors.EngineClosedError:
        detail = f" ({type(why).__name__}: {why})" if why is not None else ""
        return errors.EngineClosedError(
            f"shared engine for {self._label} (pid {self.pid}) went away with requests in "
            f"flight{detail}: it was killed or crashed (its log: the .log file beside its "
            "socket); the task fails and Spark retries it on a fresh engine"
        )

    def _fail(self, error: BaseException) -> None:
        with self._answers_lock:
            if self._gone is None:
                self._gone = error
            pending, self._answers = self._answers, {}
        for answer in pending.values():
            if answer.segment is not None:
                self._segments.give_back(answer.segment)  # closed with the pool
                answer.segment = None
            answer.set(error=error)


def _rebuilt(meta: dict[str, Any]) -> Exception:
    """The engine's exception, as the same type with the same text."""
    kind = _EXCEPTIONS.get(str(meta.get("type")), RuntimeError)
    text = str(meta.get("message", ""))
    if kind is RuntimeError and meta.get("type") != "RuntimeError":
        text = f"{meta.get('type')}: {text}"
    error = kind(text)
    if isinstance(meta.get("request"), int):
        error.torchspark_request = meta["request"]  # see worker._locate
    return error


def open_engine(place: rendezvous.Place, config: bytes, label: str) -> SharedEngine:
    """A connection to ``place``'s engine, started first (with ``config``) if
    none answers. Concurrent callers start one engine (the start lock)."""
    secret = rendezvous.application_secret(place.directory)
    for _ in range(3):  # an engine may leave (idle) between our look and our hello
        with rendezvous.starting(place):
            welcome = _hello(rendezvous.connect(place), secret, None, label)
            if welcome is None:
                rendezvous.start(place, config, label)
                welcome = _hello(rendezvous.connect(place), secret, None, label)
        if welcome is not None:
            sock, meta = welcome

            def opener(overrides: dict[str, Any]) -> SharedEngine:
                sibling = _hello(rendezvous.connect(place), secret, overrides, label)
                if sibling is None:
                    raise errors.EngineClosedError(
                        f"shared engine for {label}: gone before a sibling could connect"
                    )
                return SharedEngine(*sibling, label)

            return SharedEngine(sock, meta, label, opener)
    raise RuntimeError(f"shared engine for {label}: no engine answered at {place.socket_path}")


def _hello(
    sock: socket.socket | None, secret: bytes, sibling: dict[str, Any] | None, label: str
) -> tuple[socket.socket, dict[str, Any]] | None:
    """Introduce this task on ``sock``: (sock, the engine's WELCOME), or None
    when the engine closes (leaving); refused: PermissionError."""
    if sock is None:
        return None
    try:
        protocol.send(sock, protocol.HELLO, meta={"secret": secret.hex(), "sibling": sibling})
        answer = protocol.receive(sock)
    except OSError:
        answer = None
    if answer is not None and answer.kind == protocol.WELCOME:
        return sock, answer.meta
    sock.close()
    if answer is not None and answer.kind == protocol.REFUSED:
        raise PermissionError(f"shared engine for {label}: {answer.meta.get('error')}")
    if answer is not None:
        raise protocol.ProtocolError(f"expected WELCOME from the engine, got {answer.name}")
    return None
