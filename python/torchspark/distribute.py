"""Getting a model file from the driver to every Spark executor, once per host.

A model is named on the driver by one of:

* a local path: shipped with ``SparkContext.addFile`` under a name that
  carries its sha256 (two models called ``model.pt`` never collide);
* the name of a file already added with ``SparkContext.addFile``;
* a URI that ``pyarrow.fs`` understands (``file://``, ``s3://``, ``hdfs://``,
  ``gs://``...): each executor host downloads it once into a local cache
  (``$TORCHSPARK_CACHE`` or ``~/.cache/torchspark/models``), through a
  temporary file renamed into place atomically, so concurrent tasks on one
  host never see a partial file.

With ``sha256`` the file is verified before it is loaded (model files are
code: verify what you did not build yourself).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

__all__ = ["ModelRef", "fetch", "ship"]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_uri(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isidentifier()


@dataclass(frozen=True)
class ModelRef:
    """Where an executor finds the model: ``kind`` is ``"sparkfile"`` (a
    ``SparkFiles`` name), ``"uri"`` (a ``pyarrow.fs`` URI) or ``"path"`` (a
    path every executor can read, e.g. in local mode)."""

    kind: str
    location: str
    sha256: str | None = None

    @property
    def name(self) -> str:
        """The file name, for messages and logs."""
        return os.path.basename(self.location.rstrip("/")) or self.location


_shipped: dict[tuple[int, str], str] = {}  # (id(SparkContext), digest) -> SparkFiles name
_ship_lock = threading.Lock()


def ship(model: str | os.PathLike[str], sc: object | None, sha256: str | None = None) -> ModelRef:
    """Driver side: make ``model`` reachable from the executors of ``sc``.

    Raises ``FileNotFoundError`` naming the model when it is neither a URI, a
    local file nor a file added with ``SparkContext.addFile``, and
    ``ValueError`` when a local file's digest is not ``sha256``.
    """
    location = os.fspath(model)
    expected = sha256.lower() if sha256 else None
    if _is_uri(location):
        return ModelRef("uri", location, expected)
    if os.path.isfile(location):
        digest = sha256_file(location)
        if expected and digest != expected:
            raise ValueError(f"model '{location}': sha256 is {digest}, expected {expected}")
        if sc is None or _is_local_master(sc):
            # Executors share the driver's file system: no copy needed.
            return ModelRef("path", os.path.abspath(location), digest)
        return ModelRef("sparkfile", _add_file(sc, location, digest), digest)
    if sc is not None:
        from pyspark import SparkFiles

        try:
            added = SparkFiles.get(location)
        except Exception:
            added = ""
        if added and os.path.isfile(added):
            digest = sha256_file(added) if expected else None
            if expected and digest != expected:
                raise ValueError(f"model '{location}': sha256 is {digest}, expected {expected}")
            return ModelRef("sparkfile", location, expected)
    raise FileNotFoundError(
        f"model '{location}': not a local file, not a file added with SparkContext.addFile, "
        "and not a URI (file://, s3://, hdfs://, gs://...)"
    )


def _is_local_master(sc: object) -> bool:
    master = str(getattr(sc, "master", ""))
    return master == "local" or master.startswith("local[")


def _add_file(sc: object, path: str, digest: str) -> str:
    key = (id(sc), digest)
    with _ship_lock:
        if key in _shipped:
            return _shipped[key]
        name = f"{digest[:16]}-{os.path.basename(path)}"
        staged_dir = tempfile.mkdtemp(prefix="torchspark-ship-")
        staged = os.path.join(staged_dir, name)
        try:
            os.link(path, staged)
        except OSError:
            shutil.copyfile(path, staged)
        sc.addFile(staged)  # type: ignore[attr-defined]
        _shipped[key] = name
        return name


# ---------------------------------------------------------------------------
# Executor side

_verified: dict[tuple[str, float, int], str] = {}  # (path, mtime, size) -> digest
_fetch_lock = threading.Lock()


def cache_dir() -> str:
    return os.environ.get("TORCHSPARK_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "torchspark", "models"
    )


def fetch(ref: ModelRef) -> str:
    """Executor side: a local path of the model, verified when ``ref.sha256`` is set."""
    if ref.kind == "path":
        path = ref.location
    elif ref.kind == "sparkfile":
        from pyspark import SparkFiles

        path = SparkFiles.get(ref.location)
    elif ref.kind == "uri":
        path = _download(ref)
    else:
        raise ValueError(f"model '{ref.location}': unknown reference kind {ref.kind!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model '{ref.location}': expected a file at '{path}'")
    if ref.sha256:
        _verify(path, ref)
    return path


def _verify(path: str, ref: ModelRef) -> None:
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    with _fetch_lock:
        digest = _verified.get(key)
    if digest is None:
        digest = sha256_file(path)
        with _fetch_lock:
            _verified[key] = digest
    if digest != ref.sha256:
        raise ValueError(f"model '{ref.location}': sha256 is {digest}, expected {ref.sha256}")


def _download(ref: ModelRef) -> str:
    import pyarrow.fs as pafs

    key = hashlib.sha256(f"{ref.location}\n{ref.sha256 or ''}".encode()).hexdigest()[:24]
    directory = os.path.join(cache_dir(), key)
    target = os.path.join(directory, ref.name)
    if os.path.isfile(target):
        return target
    os.makedirs(directory, exist_ok=True)
    try:
        fs, remote = pafs.FileSystem.from_uri(ref.location)
    except Exception as e:
        raise ValueError(f"model '{ref.location}': pyarrow.fs cannot open this URI: {e}") from e
    try:
        src = fs.open_input_stream(remote)
    except Exception as e:
        raise FileNotFoundError(f"model '{ref.location}': cannot read it: {e}") from e
    fd, tmp = tempfile.mkstemp(prefix=f".{ref.name}.", dir=directory)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, src:
            while True:
                block = src.read(1 << 22)
                if not block:
                    break
                digest.update(block)
                out.write(block)
        if ref.sha256 and digest.hexdigest() != ref.sha256:
            raise ValueError(
                f"model '{ref.location}': downloaded sha256 is {digest.hexdigest()}, "
                f"expected {ref.sha256}"
            )
        os.replace(tmp, target)  # atomic: readers see the old state or the whole file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
