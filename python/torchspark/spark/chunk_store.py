"""The output directory of a resumable write: its manifest, chunk commits and staging.

Layout of ``path`` (a local path or a ``pyarrow.fs`` URI that the driver and
every executor can reach)::

    path/
      part-00000.parquet ...      committed rows: one file per input partition
      _SUCCESS                    every chunk committed
      _torchspark/
        manifest.json             the job's identity (job_identity.JobIdentity)
        commits/chunk-00003.json  one per committed chunk: partitions, rows, files
        staging/<run>/            the task files of chunks not committed yet

Spark's file listing skips names that start with ``_`` or ``.``: readers of
``path`` (``spark.read.parquet(path)``) see only the ``part-*.parquet`` files.

A chunk commits in two steps, on the driver, once its Spark job succeeded:

1. ``commits/chunk-N.json`` is written (under a hidden name, then renamed: a
   record is whole or absent). It names each successful task's staging file
   and the output name it takes. The chunk is committed when the record exists.
2. Each of those files is renamed to ``path/part-<partition>.parquet``.

A crash before step 1 leaves staging files only: the chunk is scored again
and they are deleted. A crash during step 2 leaves a committed chunk with
files still in staging: the next run moves them first (rolls forward). So no
row of an uncommitted chunk reaches the output, and each committed row is in
it once (output names are per input partition; a partition is in one chunk).
While step 2 runs, a reader may see part of a committed chunk's files, as
with Spark's own job commit (which also renames file by file).

Renames are atomic on local file systems and HDFS; on object stores (S3, GCS)
a rename is a copy and a delete, so a reader may see a file while it is
copied. One driver at a time may write a path.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from typing import Any

from ..distribute import _is_uri, redact
from ..errors import ResumeError

_STATE = "_torchspark"
_CHUNK = re.compile(r"^chunk-(\d+)\.json$")


def output_name(partition: int) -> str:
    """The committed file of an input partition."""
    return f"part-{partition:05d}.parquet"


class ChunkStore:
    """The driver's view of ``path``: see the module's docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import pyarrow.fs as pafs

        path = os.fspath(path)
        self.uri = path if _is_uri(path) else os.path.abspath(path)
        self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        self.state = posixpath.join(self.root, _STATE)
        self.shown = redact(self.uri)  # for messages

    # -- reading

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_json(self, path: str) -> dict[str, Any]:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def manifest(self) -> dict[str, Any] | None:
        """The manifest of an earlier run, or None."""
        path = posixpath.join(self.state, "manifest.json")
        return self._read_json(path) if self._exists(path) else None

    def foreign_entries(self) -> list[str]:
        """Names under ``path`` when it holds something that no predict_to wrote
        (no manifest): such a path is neither resumed nor cleared."""
        import pyarrow.fs as pafs

        if not self._exists(self.root) or self.manifest() is not None:
            return []
        entries = self.fs.get_file_info(pafs.FileSelector(self.root))
        # _torchspark alone: a first run stopped before its manifest was whole.
        return sorted(n for e in entries if (n := posixpath.basename(e.path)) != _STATE)

    def commits(self) -> dict[int, dict[str, Any]]:
        """Chunk -> its commit record."""
        import pyarrow.fs as pafs

        folder = posixpath.join(self.state, "commits")
        found = {}
        for entry in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            match = _CHUNK.match(posixpath.basename(entry.path))
            if match:
                found[int(match[1])] = self._read_json(entry.path)
        return found

    # -- writing

    def _write_json(self, path: str, data: dict[str, Any]) -> None:
        """Whole or absent: written under a hidden name, then renamed."""
        folder, name = posixpath.split(path)
        self.fs.create_dir(folder, recursive=True)
        hidden = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}")
        with self.fs.open_output_stream(hidden) as f:
            f.write(json.dumps(data, indent=1, sort_keys=True).encode())
        self.fs.move(hidden, path)

    def start(self, manifest: dict[str, Any]) -> None:
        """A new job: everything under ``path`` deleted (it holds an earlier
        predict_to output or nothing), then the manifest written."""
        if self._exists(self.root):
            self.fs.delete_dir_contents(self.root)
        self._write_json(posixpath.join(self.state, "manifest.json"), manifest)

    def staging_uri(self, run: str) -> str:
        """This run's staging folder, as the executors name it."""
        relative = posixpath.join(_STATE, "staging", run)
        if _is_uri(self.uri):
            return posixpath.join(self.uri, relative)
        return os.path.join(self.uri, relative)

    def make_staging(self, run: str) -> None:
        """Create this run's staging folder (after :meth:`start`, which clears)."""
        self.fs.create_dir(posixpath.join(self.state, "staging", run), recursive=True)

    def commit(
        self, chunk: int, run: str, job: str, summaries: list[tuple[int, int, str | None]]
    ) -> dict[str, Any]:
        """Commit ``chunk`` from its tasks' ``(partition, rows, staging file)``;
        returns its record."""
        record = {
            "chunk": chunk,
            "job": job,
            "run": run,
            "partitions": [p for p, _, _ in summaries],
            "rows": [r for _, r, _ in summaries],
            "files": [
                [posixpath.join("staging", run, f), output_name(p)]
                for p, _, f in summaries
                if f is not None
            ],
        }
        self._write_json(posixpath.join(self.state, "commits", f"chunk-{chunk:05d}.json"), record)
        self.roll_forward(record)
        return record

    def roll_forward(self, record: dict[str, Any]) -> None:
        """Move a committed chunk's files that are still in staging to the output."""
        for staged, name in record["files"]:
            final = posixpath.join(self.root, name)
            if self._exists(final):
                continue
            source = posixpath.join(self.state, staged)
            if not self._exists(source):
                raise ResumeError(
                    f"predict_to at '{self.shown}': committed chunk {record['chunk']} lists "
                    f"{name}, which is neither in the output nor in staging ({staged}): the "
                    "output was changed by something else; start over with resume=False or "
                    "write to a new path"
                )
            self.fs.move(source, final)

    def drop_staging(self) -> None:
        """Delete the staging files of chunks that never committed (after the
        committed ones were rolled forward)."""
        folder = posixpath.join(self.state, "staging")
        if self._exists(folder):
            self.fs.delete_dir(folder)

    def finish(self) -> None:
        """Every chunk committed: staging deleted, ``_SUCCESS`` written."""
        self.drop_staging()
        with self.fs.open_output_stream(posixpath.join(self.root, "_SUCCESS")):
            pass
