"""Where a task finds its executor's shared engine, and how the first task starts it.

Every engine lives in one private directory per user and Spark application::

    <base>/torchspark-<uid>/<application id>/      0700, owned by the user
        secret            32 random bytes, 0600: sent first on every connection
        <key>.sock        the engine's socket, 0600
        <key>.start       flock: held while a task connects or starts the engine
        <key>.live        flock: held by the engine process for its whole life
        <key>.log         the engine's stderr
        loads.jsonl       one line per model load (pid, key, executor and its JVM pid, device)

``<base>`` is ``$TORCHSPARK_SHARED_DIR``, else the first of Spark's local
directories (``$SPARK_LOCAL_DIRS``, set for Python workers), else the
system's temporary directory. ``<key>`` is a digest of the executor (its id
and JVM pid), the device, the model file (path, size, modification time),
the input layout and the engine options: tasks agree on it without talking.

A task takes ``<key>.start`` (blocking), connects if the engine answers, and
otherwise starts one: a socket whose ``<key>.live`` lock is free belongs to
a dead engine (killed, crashed) and is removed first. So concurrent first
tasks start exactly one engine, and an engine that exits on idleness takes
``<key>.start`` too, so that no task connects while it goes. Socket paths are
limited to 107 bytes: they are reached as ``/proc/self/fd/<dir fd>/<key>.sock``
whatever the length of the directory's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import select
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SECRET_BYTES = 32
START_TIMEOUT_S = 300.0  # a model load (a large file, a cold disk) before the engine answers


def base_directory() -> str:
    """Where the per-user directory goes (see the module's docstring)."""
    given = os.environ.get("TORCHSPARK_SHARED_DIR")
    if given:
        return given
    local = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return local[0] if local else tempfile.gettempdir()


def private_directory(path: str) -> str:
    """``path`` made (0700) or checked: a directory, not a link, owned by this
    user, with no access for others (tightened to 0700 if it has some).
    Raises PermissionError otherwise."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(
            f"shared engine directory '{path}': expected a directory owned by uid "
            f"{os.getuid()}, found mode {stat.filemode(info.st_mode)} owned by uid {info.st_uid}"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def application_directory(application: str) -> str:
    """The private directory of ``application``'s engines on this host."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", application) or application in (".", ".."):
        raise ValueError(f"application id {application!r}: expected letters, digits, '._-'")
    user = private_directory(os.path.join(base_directory(), f"torchspark-{os.getuid()}"))
    return private_directory(os.path.join(user, application))


def application_secret(directory: str) -> bytes:
    """The application's secret: made once (atomically: a full file linked
    into place), read by everyone after. Refused unless 0600 and ours."""
    path = os.path.join(directory, "secret")
    if not os.path.exists(path):
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".secret-")
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.close(fd)
            os.unlink(temporary)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(
                f"shared engine secret '{path}': expected mode 0600 owned by uid {os.getuid()}, "
                f"found {stat.filemode(info.st_mode)} owned by uid {info.st_uid}"
            )
        secret = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(secret) != SECRET_BYTES:
        raise PermissionError(f"shared engine secret '{path}': {len(secret)} bytes, expected 32")
    return secret


def engine_key(*parts: Any) -> str:
    """A short digest naming one engine (see the module's docstring)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


@dataclass
class Place:
    """One engine's files: ``directory`` (the application's) and ``key``."""

    directory: str
    key: str

    def path(self, suffix: str) -> str:
        return os.path.join(self.directory, self.key + suffix)

    @property
    def socket_path(self) -> str:
        return self.path(".sock")


@contextlib.contextmanager
def _locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """flock ``path`` exclusively; yields whether it was taken (always, when blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def starting(place: Place) -> contextlib.AbstractContextManager[bool]:
    """Hold ``place``'s start lock (tasks connecting, an engine leaving)."""
    return _locked(place.path(".start"))


def engine_alive(place: Place) -> bool:
    """Whether an engine process holds ``place``'s live lock."""
    with _locked(place.path(".live"), blocking=False) as free:
        return not free


def live_lock(place: Place) -> int | None:
    """The engine's side: take the live lock for this process's life; its
    descriptor (keep it open), or None when another engine holds it."""
    fd = os.open(place.path(".live"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Address:
    """A socket path short enough for ``AF_UNIX`` (``/proc/self/fd/N/name``),
    valid while this object holds the directory's descriptor."""

    def __init__(self, place: Place) -> None:
        self._fd = os.open(place.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.path = f"/proc/self/fd/{self._fd}/{place.key}.sock"

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Address:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(place: Place) -> socket.socket | None:
    """A connection to ``place``'s engine, or None when none listens."""
    if not os.path.exists(place.socket_path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with Address(place) as address:
            sock.connect(address.path)
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    return sock


# Run the rest of argv in a grandchild: the engine is no child of the task
# (init, or Spark's subreaper, reaps it: no zombie in the Python worker).
_DETACH = (
    "import os, sys; os.fork() and os._exit(0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def start(place: Place, config: bytes, label: str) -> int:
    """Start ``place``'s engine (the caller holds the start lock and found
    none): remove a dead engine's socket, run the server in its own session
    with ``config`` on its stdin, wait until it listens. Its pid; raises
    RuntimeError with the end of its log if it exits first."""
    if os.path.exists(place.socket_path) and not engine_alive(place):
        os.unlink(place.socket_path)
    log = os.open(place.path(".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _DETACH, "-m", "torchspark.spark.shared.server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # not in the task's process group: Spark kills that
            close_fds=True,
        )
    finally:
        os.close(log)
    assert process.stdin is not None and process.stdout is not None
    with process.stdin:
        process.stdin.write(config)
    deadline = time.monotonic() + START_TIMEOUT_S
    with process.stdout:
        while True:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([process.stdout], [], [], max(left, 0.0))
            line = process.stdout.readline() if readable else b""
            if line.startswith(b"ready"):
                process.wait()
                return int(line.split()[1])
            if readable and line:
                continue
            how = "exited" if readable else f"did not start within {START_TIMEOUT_S:.0f} s"
            if not readable:
                process.kill()
            process.wait()
            raise RuntimeError(
                f"shared engine for {label}: the engine process {how}; the end of its log "
                f"{place.path('.log')}:\n{log_tail(place)}"
            )


def log_tail(place: Place, size: int = 4000) -> str:
    try:
        with open(place.path(".log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"(no log: {e})"


def record_load(place: Place, fields: dict[str, Any]) -> None:
    """Append one model load to the application's ``loads.jsonl``."""
    line = json.dumps({"key": place.key, **fields}) + "\n"
    fd = os.open(
        os.path.join(place.directory, "loads.jsonl"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
        0o600,
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
