"""Spark Connect: what changes when the session is a Connect client.

Under Spark Connect (``SparkSession.builder.remote("sc://host")``, or
``remote("local[2]")`` for a local server) this Python process is a client of
a Spark driver that runs elsewhere: there is no ``SparkContext`` here, so no
``addFile``, no accumulators and no status store. The rest of the package asks
this module, and nothing else switches on the session's kind:

* :func:`files`: where model and tokenizer files are shipped. A Connect
  session ships them with ``SparkSession.addArtifacts(path, file=True)``; the
  executors' Python workers find them with ``SparkFiles.get(name)`` (the
  session's artifact directory is their SparkFiles root: checked against
  pyspark 4.3's Connect server in tests/test_connect.py). ``sha256=`` is
  checked on the client before the upload and on the executor before loading.
* :func:`records_directory`: where the tasks' records go
  (:class:`.record_files.RecordFiles`): ``spark.torchspark.records.dir`` (a
  path or ``pyarrow.fs`` URI that both the client and the executors reach),
  else, when the server runs on this host, a private temporary directory of
  this client. Against a remote server without that conf no record reaches
  the client and :func:`~torchspark.last_report` returns None.
* :data:`LIMITS`: what :class:`.report.Report` cannot show under Connect.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import tempfile
import threading
from typing import Any

logger = logging.getLogger("torchspark")

RECORDS_DIR = "spark.torchspark.records.dir"

# Report fields filled differently under Spark Connect, and why.
LIMITS = {
    "failed": (
        "from the tasks' own errors only: Spark's job history (its error, a job that failed "
        "before a task of ours ran) stays on the Connect server"
    ),
    "tasks": (
        "a job that ran no task (an empty DataFrame) leaves no record, so the report shows "
        "the last job that ran one"
    ),
}


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


class SessionFiles:
    """A Connect session's side of :func:`torchspark.distribute.ship`: files
    go to the executors with ``addArtifacts(file=True)``, under their name."""

    master = "connect"  # never "local": the server's file system is not ours

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def addFile(self, path: str) -> None:  # SparkContext.addFile's name: ship() calls either
        self.spark.addArtifacts(path, file=True)


_sessions: dict[str, SessionFiles] = {}  # Connect session id -> its files
_sessions_lock = threading.Lock()


def files(spark: Any) -> Any:
    """What ships files to ``spark``'s executors: its SparkContext, or a
    :class:`SessionFiles` (one per Connect session, so a file goes up once)."""
    if not is_connect(spark):
        return spark.sparkContext
    with _sessions_lock:
        found = _sessions.get(spark.session_id)
        if found is None:
            found = _sessions[spark.session_id] = SessionFiles(spark)
        return found


def _server_is_local(spark: Any) -> bool:
    builder = getattr(spark.client, "_builder", None)
    host = str(getattr(builder, "host", "") or "").strip("[]")
    return host in {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}


_temp_root: list[str] = []  # this client's records directory for local servers
_warned: set[str] = set()


def records_directory(spark: Any) -> str | None:
    """Where the tasks of a Connect session write their records: the
    :data:`RECORDS_DIR` conf, else a private temporary directory of this
    client (removed at exit) when the server runs on this host; None (with
    one warning per session) when no directory is known to both."""
    configured = spark.conf.get(RECORDS_DIR, None)
    if configured:
        configured = str(configured)  # a relative path means this client's
        return configured if "://" in configured else os.path.abspath(configured)
    if _server_is_local(spark):
        with _sessions_lock:
            if not _temp_root:
                root = tempfile.mkdtemp(prefix="torchspark-records-")  # mode 0700
                atexit.register(shutil.rmtree, root, True)
                _temp_root.append(root)
            return _temp_root[0]
    with _sessions_lock:
        if spark.session_id not in _warned:
            _warned.add(spark.session_id)
            logger.warning(
                "torchspark: under Spark Connect to a remote server the tasks' records cannot "
                "reach this client, so last_report() returns None; set %s to a directory (a "
                "pyarrow.fs URI such as s3://bucket/tmp/) that this client and the executors "
                "both reach",
                RECORDS_DIR,
            )
    return None
