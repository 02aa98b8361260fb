"""The live channel from the tasks to the driver: :class:`Sender`, :class:`Receiver`.

Task records reach the driver only when a task ends (an accumulator,
:mod:`.report`); the progress line and the driver's ``/metrics`` need figures
while tasks run. Each task sends, over UDP to the driver's host
(``spark.driver.host``), its figures so far: cumulative for the task attempt,
so that a lost or late datagram costs freshness, never a wrong sum (the
receiver keeps the newest of each attempt). Fire-and-forget for the task: a
non-blocking send whose every error is swallowed, at most once per
``interval_s`` (and once at the task's end), never raising into it.

A datagram holds a token the driver made for the run: a datagram without it
(another job, a stray sender) is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("torchspark")

_MAX_DATAGRAM = 65507  # UDP's payload limit; a task's message is about 1 KB


class Sender:
    """A worker's sender to the driver at ``address`` (host, port); the host is
    resolved at the first send, once per process."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._resolved: tuple[Any, ...] | None = None
        self._socket: socket.socket | None = None
        self.dropped = 0  # sends that failed (the driver then lags, nothing else)

    def send(self, message: dict[str, Any]) -> None:
        try:
            if self._socket is None:
                family, _, _, _, resolved = socket.getaddrinfo(
                    *self.address, type=socket.SOCK_DGRAM
                )[0]
                self._socket = socket.socket(family, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
                self._resolved = resolved
            self._socket.sendto(json.dumps(message).encode(), self._resolved)
        except (OSError, ValueError, TypeError):
            self.dropped += 1


_senders: dict[tuple[str, int], Sender] = {}
_senders_lock = threading.Lock()


def sender(address: tuple[str, int]) -> Sender:
    """The process's sender to ``address`` (one socket per driver)."""
    with _senders_lock:
        if address not in _senders:
            _senders[address] = Sender(address)
        return _senders[address]


class Receiver:
    """The driver's end: a UDP socket on ``bind`` (all interfaces by default)
    read by a daemon thread, keeping each task attempt's newest message per
    run. ``on_message(message)`` is called (on that thread) after each one is
    kept; it must be quick."""

    def __init__(self, token: str, bind: str = "", port: int = 0) -> None:
        self.token = token
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((bind, port))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._tasks: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="torchspark-live", daemon=True)
        self._thread.start()

    def listen(self, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                message = json.loads(data)
                if not isinstance(message, dict) or message.get("token") != self.token:
                    continue
                self._keep(message)
            except Exception as e:  # a malformed datagram: dropped
                logger.debug("torchspark: live message dropped: %s", e)

    def _keep(self, message: dict[str, Any]) -> None:
        key = (message["stage"], message["partition"], message["attempt"])
        message["received"] = time.time()
        with self._lock:
            tasks = self._tasks.setdefault(str(message["run"]), {})
            old = tasks.get(key)
            if old is None or message["seq"] >= old["seq"]:
                tasks[key] = message
            listeners = list(self._listeners)
        for listener in listeners:
            listener(message)

    def runs(self) -> list[str]:
        with self._lock:
            return list(self._tasks)

    def tasks(self, run: str | None = None) -> list[dict[str, Any]]:
        """The newest message of each task attempt of ``run`` (all runs: None)."""
        with self._lock:
            if run is not None:
                return list(self._tasks.get(run, {}).values())
            return [m for tasks in self._tasks.values() for m in tasks.values()]

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._socket.close()
        self._thread.join(timeout=2)
