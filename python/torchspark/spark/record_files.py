"""Task records as files, for sessions without accumulators (Spark Connect).

Each task writes its records (see :mod:`.report`) into one new file of the
run's directory, under a temporary name renamed into place, so the driver never
reads half a file; the driver reads them all. Every attempt of a task writes
its own file, failed attempts included (their records carry the error): the
report keeps one record per task (the latest successful attempt), so a
retried task counts once.

Records are pickled, as accumulator updates are: the directory must be one
that only this user (and the executors, running as this user) can write.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import uuid
from typing import Any


def _filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


class RecordFiles:
    """A run's records in ``<directory>/<run>/``: ``add`` on the executors
    (as an accumulator's), ``value`` on the driver. ``directory`` is a local
    path or a ``pyarrow.fs`` URI that both reach."""

    def __init__(self, directory: str, run: str) -> None:
        self.directory = directory
        self.run = run

    def _base(self) -> tuple[Any, str]:
        fs, root = _filesystem(self.directory)
        return fs, posixpath.join(root, self.run)

    def add(self, records: list[dict[str, Any]]) -> None:
        """Writes ``records`` (one task's) as one file."""
        fs, base = self._base()
        fs.create_dir(base, recursive=True)
        name = uuid.uuid4().hex
        final = posixpath.join(base, f"{name}.pkl")
        temporary = posixpath.join(base, f".{name}.tmp")
        with fs.open_output_stream(temporary) as out:
            out.write(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
        fs.move(temporary, final)

    @property
    def value(self) -> list[dict[str, Any]]:
        """Every record written so far (none when the directory is absent)."""
        import pyarrow.fs as pafs

        fs, base = self._base()
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except OSError:
            return []
        records: list[dict[str, Any]] = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.base_name.endswith(".pkl"):
                continue
            with fs.open_input_stream(info.path) as f:
                records.extend(pickle.loads(f.read()))
        return records
