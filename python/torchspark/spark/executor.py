"""Which Spark executor a Python worker runs for: :func:`identify`.

PySpark does not tell a Python worker its executor's id. The executor is the
JVM that started the worker's daemon: on YARN, Kubernetes and standalone it
runs ``...ExecutorBackend --executor-id <id>``; in local mode the driver's
JVM runs the tasks, executor ``"driver"`` as Spark calls it. Kubernetes also
sets ``SPARK_EXECUTOR_ID``. Without ``/proc`` (not Linux): ``"unknown"``.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

_ANCESTORS = 4  # worker -> daemon -> JVM (a launcher script may sit in between)


@dataclass(frozen=True)
class Executor:
    id: str  # Spark's executor id ("driver" in local mode)
    pid: int  # the executor's JVM (the worker's parent where it cannot be found)
    host: str  # the name this host is reached by (Spark's SPARK_LOCAL_HOSTNAME/IP first)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        return int(f.read().rpartition(")")[2].split()[1])


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


@functools.cache
def identify() -> Executor:
    """This process's executor (cached: a worker serves one executor)."""
    host = (
        os.environ.get("SPARK_LOCAL_HOSTNAME")
        or os.environ.get("SPARK_LOCAL_IP")
        or socket.gethostname()
    )
    executor_id = os.environ.get("SPARK_EXECUTOR_ID")
    pid = os.getppid()
    jvm = False
    try:
        ancestor = os.getppid()
        for _ in range(_ANCESTORS):
            if ancestor <= 1:
                break
            args = _cmdline(ancestor)
            if any(a.endswith("java") for a in args[:1]):
                pid, jvm = ancestor, True
                if "--executor-id" in args:
                    executor_id = executor_id or args[args.index("--executor-id") + 1]
                break
            ancestor = _parent(ancestor)
    except (OSError, ValueError, IndexError):  # no /proc (macOS): the parent, id unknown
        pass
    return Executor(executor_id or ("driver" if jvm else "unknown"), pid, host)
