"""The shared engine process: one :class:`torchspark.Engine` that every task of
an executor feeds (run as ``python -m torchspark.spark.shared.server``).

Started by the first task that needs it (:func:`.rendezvous.start`), with its
configuration pickled on stdin; prints ``ready <pid>`` on stdout once it listens.
It loads the model once (recorded in ``loads.jsonl``) and serves each
connection with two threads: a reader that checks the peer (same uid,
``SO_PEERCRED``; the application's secret, ``hmac.compare_digest``), then
maps each submitted segment as an Arrow batch and submits it to the engine,
where it batches with the other tasks' rows; and a writer that sends each
request's outputs (a segment of tensors) or its error back, in order. A
connection asking for a sibling (bad-row isolation) gets its own engine over
the same loaded model, closed with the connection.

A client that goes away (task cancelled or killed) is dropped: its requests
still run (the engine cannot take rows back out of a batch) and their
outputs are discarded; the other connections are unaffected.

Custom torch ops that the model calls (a task's Python worker would import
or load them) are loaded first from ``$TORCHSPARK_OP_LIBRARIES`` (shared
libraries separated by ``os.pathsep``).

It exits, removing its socket, when the executor's JVM exits (watched with a
pidfd), on SIGTERM, or after ``idle_s`` seconds without a connection. If it
is killed, its socket stays until the next task that needs an engine finds
its live lock free and removes it; its segments go with it (memfds).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import pickle
import queue
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from . import protocol, rendezvous, segment

logger = logging.getLogger("torchspark.shared")
_HELLO_TIMEOUT_S = 10.0
_TICK_S = 1.0


class Server:
    """The engine, its socket and its connections (see the module's docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from ...engine import Engine, usable_cores

        self.config = config
        self.place = rendezvous.Place(config["directory"], config["key"])
        self.secret = rendezvous.application_secret(self.place.directory)
        options = dict(config["options"])
        if config["device"].startswith("cpu"):
            options.update(
                cpu_layout(options, config.get("cores") or usable_cores(), config.get("task_cpus"))
            )
        self.engine = Engine(
            config["path"], device=config["device"], inputs=config["specs"], **options
        )
        rendezvous.record_load(
            self.place,
            {
                "pid": os.getpid(),
                "executor": config["executor"],
                "jvm": config.get("jvm"),
                "device": str(self.engine.device),
                "model": config["label"],
                "time": time.time(),
            },
        )
        self.lock = threading.Lock()
        self.connections = 0
        self.accepted = 0
        self.last_active = time.monotonic()
        self.stopping = threading.Event()

    def welcome(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "format": self.engine.model.format,
            "batch_size": self.engine.batch_size,
            "inflight": self.engine.inflight,
            "padded": self.engine.padded,
            "device": str(self.engine.device),
            "threads": self.engine.threads,
            "intra_op_threads": self.engine.intra_op_threads,
        }

    def serve(self, listener: socket.socket, jvm: int | None) -> str:
        """Accept connections until the executor goes, a signal, or idleness; why it stopped."""
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, "accept")
        watch = _pidfd(jvm)
        if watch is not None:
            selector.register(watch, selectors.EVENT_READ, "executor")
        elif jvm is not None:
            return f"executor JVM {jvm} is gone"
        idle_s = float(self.config["idle_s"])
        while not self.stopping.is_set():
            for key, _ in selector.select(_TICK_S):
                if key.data == "executor":
                    return f"executor JVM {jvm} exited"
                conn, _ = listener.accept()
                with self.lock:
                    self.connections += 1
                    self.accepted += 1
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
            with self.lock:
                idle = self.connections == 0 and time.monotonic() - self.last_active > idle_s
            if idle:
                # No task may connect while the socket goes (they hold the start lock).
                with rendezvous._locked(self.place.path(".start"), blocking=False) as taken:
                    if taken:
                        with self.lock:
                            if self.connections == 0:
                                _remove(self.place.socket_path)
                                return f"idle for {idle_s:.0f} s"
        return "stopped (signal)"

    # -- one connection --

    def handle(self, conn: socket.socket) -> None:
        engine = None
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        writer = None
        try:
            engine = self.admit(conn)
            if engine is None:
                return
            writer = threading.Thread(target=self.write, args=(conn, answers), daemon=True)
            writer.start()
            self.read(conn, engine, answers)
        except Exception as e:  # this connection only: the others go on
            logger.warning("connection dropped: %s: %s", type(e).__name__, e)
        finally:
            answers.put(None)
            if writer is not None:
                writer.join()
            if engine is not None and engine is not self.engine:
                engine.close(drain=False)
            conn.close()
            with self.lock:
                self.connections -= 1
                self.last_active = time.monotonic()

    def admit(self, conn: socket.socket) -> Any:
        """Check the peer and its HELLO; the engine it gets, or None (refused)."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        conn.settimeout(_HELLO_TIMEOUT_S)
        hello = protocol.receive(conn) if uid == os.getuid() else None
        conn.settimeout(None)
        secret = hello.meta.get("secret") if hello is not None else None
        why = None
        if uid != os.getuid():
            why = f"peer uid {uid}, expected {os.getuid()}"
        elif hello is None or hello.kind != protocol.HELLO:
            why = f"expected HELLO first, got {hello.name if hello else 'nothing'}"
        elif not isinstance(secret, str) or not hmac.compare_digest(
            secret.encode(), self.secret.hex().encode()
        ):
            why = "wrong application secret"
        if why is not None:
            logger.warning("connection refused: %s", why)
            with contextlib.suppress(OSError):
                protocol.send(conn, protocol.REFUSED, meta={"error": f"refused: {why}"})
            return None
        sibling = hello.meta.get("sibling")
        engine = self.engine if sibling is None else self.engine.sibling(**sibling)
        protocol.send(conn, protocol.WELCOME, meta=self.welcome())
        return engine

    def read(self, conn: socket.socket, engine: Any, answers: queue.SimpleQueue[Any]) -> None:
        while True:
            message = protocol.receive(conn)
            if message is None:
                return
            with self.lock:
                self.last_active = time.monotonic()
            if message.kind == protocol.STATS:
                answers.put((message.id, "stats", engine))
                continue
            if message.kind != protocol.SUBMIT or message.fd is None:
                if message.fd is not None:
                    os.close(message.fd)
                raise protocol.ProtocolError(f"unexpected {message.name} from a client")
            what = f"request {message.id}"
            batch = segment.read_batch(message.fd, message.length, what)
            try:
                answers.put((message.id, engine.submit(batch), batch))
            except Exception as e:  # rejected before the engine queued it: its error
                answers.put((message.id, e, batch))

    def write(self, conn: socket.socket, answers: queue.SimpleQueue[Any]) -> None:
        """Send each answer in order; after the client goes (or a send fails:
        the connection is shut so the client sees it), finish and drop the rest."""
        alive = True
        while True:
            item = answers.get()
            if item is None:
                return
            request, what, held = item  # held: the batch until answered, or the engine
            kind, meta, fd, length = _answer(what, held)
            try:
                if alive:
                    protocol.send(conn, kind, request, meta, fd, length)
            except OSError:
                alive = False  # its remaining rows are dropped
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            finally:
                if fd is not None:
                    os.close(fd)
                del held, what


def cpu_layout(options: dict[str, Any], cores: int, task_cpus: int | None) -> dict[str, int]:
    """The engine's ``threads`` and ``intra_op_threads`` on an executor's
    ``cores`` CPUs, where neither or only one is given: by default the
    executor's task slots (``cores // spark.task.cpus``) as worker threads of
    ``spark.task.cpus`` intra-op threads each, the layout of one engine per
    task (on the MLP workload one worker over both cores ran at 0.89x of
    that: benchmarks/RESULTS.md); with one of them given, the other divides
    the cores by it.

    >>> cpu_layout({}, 4, 1), cpu_layout({}, 8, 2)
    ({'threads': 4, 'intra_op_threads': 1}, {'threads': 4, 'intra_op_threads': 2})
    >>> cpu_layout({"threads": 1}, 4, 1), cpu_layout({"intra_op_threads": 3}, 8, None)
    ({'threads': 1, 'intra_op_threads': 4}, {'threads': 2, 'intra_op_threads': 3})
    """
    cores = max(1, cores)
    threads, intra = options.get("threads"), options.get("intra_op_threads")
    if intra is None:
        intra = max(1, cores // threads) if threads else max(1, min(task_cpus or 1, cores))
    if threads is None:
        threads = max(1, cores // intra)
    return {"threads": threads, "intra_op_threads": intra}


def _answer(what: Any, held: Any) -> tuple[int, dict[str, Any], int | None, int]:
    """(kind, meta, descriptor, length) answering one request: the engine's
    statistics, the outputs of a future (in a new segment), or an error."""
    from ..outputs import flatten

    try:
        if isinstance(what, Exception):
            raise what
        if isinstance(what, str):  # "stats"
            return protocol.INFO, {"stats": held.stats(), "histograms": held.histograms()}, None, 0
        names, tensors = flatten(what.result())
        fd, length, layout = segment.write_tensors(tensors)
        return protocol.RESULT, {"names": names, "tensors": layout}, fd, length
    except Exception as e:
        return protocol.FAILED, _failure(e), None, 0


def _failure(error: Exception) -> dict[str, Any]:
    text = str(error)
    if len(text) > protocol.MAX_META // 2:  # a message must fit in one record
        text = text[: protocol.MAX_META // 4] + " ... (cut)"
    request = getattr(error, "torchspark_request", None)  # the engine's id of the request
    return {"type": type(error).__name__, "message": text, "request": request}


def _pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main() -> int:
    os.umask(0o077)
    config = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s torchspark shared engine %(process)d: %(message)s"
    )
    place = rendezvous.Place(config["directory"], config["key"])
    live = rendezvous.live_lock(place)
    if live is None:
        logger.error("another engine holds %s", place.path(".live"))
        return 1
    for library in filter(None, os.environ.get("TORCHSPARK_OP_LIBRARIES", "").split(os.pathsep)):
        import torch

        torch.ops.load_library(library)  # custom ops the model calls (a task would import them)
    server = Server(config)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: server.stopping.set())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    why = "failed"
    try:
        _remove(place.socket_path)
        with rendezvous.Address(place) as address:
            listener.bind(address.path)
        listener.listen(64)
        try:
            os.write(sys.stdout.fileno(), f"ready {os.getpid()}\n".encode())
        except BrokenPipeError:
            # The task that started it went away first (cancelled, killed, its
            # job over): the executor's other tasks find the engine all the same.
            logger.info("the task that started this engine is gone; serving the others")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the starter stops reading
        logger.info(
            "serving %s on %s for executor %s (%s)",
            config["label"],
            server.engine.device,
            config["executor"],
            place.socket_path,
        )
        why = server.serve(listener, config.get("jvm"))
    finally:
        _remove(place.socket_path)
        listener.close()
        logger.info("exiting: %s (%d connections served)", why, server.accepted)
    server.engine.close(drain=False)
    os.close(live)
    return 0


if __name__ == "__main__":
    sys.exit(main())
