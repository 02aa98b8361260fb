"""Getting a model file from the driver to every Spark executor, once per host.

A model is named on the driver by one of:

* a local path: shipped with ``SparkContext.addFile`` (under Spark Connect,
  ``SparkSession.addArtifacts(file=True)``: :mod:`torchspark.spark.connect`)
  under a name that carries its sha256 (two models called ``model.pt`` never
  collide);
* the name of a file already added with ``SparkContext.addFile``;
* a URI that ``pyarrow.fs`` understands (``file://``, ``s3://``, ``hdfs://``,
  ``gs://``...): each executor host downloads it once into a local cache
  (``$TORCHSPARK_CACHE`` or ``~/.cache/torchspark/models``), through a
  temporary file renamed into place atomically, so concurrent tasks on one
  host never see a partial file.

With ``sha256`` the file is verified before it is loaded (model files are
code: verify what you did not build yourself). The cache directories are
refused when another user could write to them (a file swapped there would
be run), and a URI's credentials (``user:password@``, a query string such as
a signed URL's) never appear in messages or logs: :func:`redact`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
import urllib.parse
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


def redact(location: str) -> str:
    """``location`` safe to show: a URI without its user info (``user:secret@``)
    and without its query and fragment (signed URLs carry their token there).

    >>> redact("s3://AKIA:secret@bucket/models/m.pt?X-Amz-Signature=abc")
    's3://***@bucket/models/m.pt?***'
    """
    if not _is_uri(location):
        return location
    parts = urllib.parse.urlsplit(location)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?***" if parts.query or parts.fragment else "")


def _scrubbed(error: BaseException, location: str) -> str:
    """``error``'s text with ``location``'s secrets (its user info, its query)
    replaced: a library's message may quote the URI it was given."""
    text = str(error)
    if not _is_uri(location):
        return text
    text = text.replace(location, redact(location))
    parts = urllib.parse.urlsplit(location)
    secrets = [parts.netloc.rsplit("@", 1)[0]] if "@" in parts.netloc else []
    secrets += [parts.query, parts.fragment, parts.password or ""]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def private_dir(directory: str) -> str:
    """``directory`` (made with mode 0700 if missing), checked: owned by this
    user and not writable by group or others, nor is the cache root above it.
    PermissionError otherwise: a file another user can replace there would be
    loaded as a model, which is code."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    root = os.path.realpath(cache_dir())
    here = os.path.realpath(directory)
    checked = [here]
    while here != root and here.startswith(root + os.sep):
        here = os.path.dirname(here)
        checked.append(here)
    for path in checked:
        st = os.stat(path)
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(
                f"cache directory '{path}' is writable by another user (owner uid "
                f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): a file there could be "
                "swapped for a model, which is code; make it private (chmod go-w) or set "
                "TORCHSPARK_CACHE to a directory only you can write"
            )
    return directory


@dataclass(frozen=True)
class ModelRef:
    """Where an executor finds the model: ``kind`` is ``"sparkfile"`` (a
    ``SparkFiles`` name), ``"uri"`` (a ``pyarrow.fs`` URI) or ``"path"`` (a
    path every executor can read, e.g. in local mode). ``local``: for a
    shipped file, the original on the machine that shipped it, which the
    driver's own checks read (a Spark Connect client has no SparkFiles)."""

    kind: str
    location: str
    sha256: str | None = None
    local: str | None = None

    @property
    def name(self) -> str:
        """The file name, for messages and logs (never a URI's credentials)."""
        shown = redact(self.location)
        path = urllib.parse.urlsplit(shown).path if _is_uri(self.location) else shown
        return os.path.basename(path.rstrip("/")) or shown

    @property
    def shown(self) -> str:
        """The location for messages: :func:`redact`."""
        return redact(self.location)


_shipped: dict[tuple[int, str], str] = {}  # (id(SparkContext), digest) -> SparkFiles name
_ship_lock = threading.Lock()


def ship(model: str | os.PathLike[str], sc: object | None, sha256: str | None = None) -> ModelRef:
    """Driver side: make ``model`` reachable from the executors of ``sc``: a
    SparkContext, or what :func:`torchspark.spark.connect.files` gives for a
    session (under Spark Connect, files go up with ``addArtifacts``).

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
        name = _add_file(sc, location, digest)
        return ModelRef("sparkfile", name, digest, os.path.abspath(location))
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
        from pyspark import SparkFiles, TaskContext

        # Outside a task (the driver's probe) the shipped original is read.
        in_task = TaskContext.get() is not None
        path = ref.local if ref.local and not in_task else SparkFiles.get(ref.location)
    elif ref.kind == "uri":
        path = _download(ref)
    else:
        raise ValueError(f"model '{ref.shown}': unknown reference kind {ref.kind!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model '{ref.shown}': expected a file at '{path}'")
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
        raise ValueError(f"model '{ref.shown}': sha256 is {digest}, expected {ref.sha256}")


def _download(ref: ModelRef) -> str:
    import pyarrow.fs as pafs

    key = hashlib.sha256(f"{ref.location}\n{ref.sha256 or ''}".encode()).hexdigest()[:24]
    directory = os.path.join(cache_dir(), key)
    target = os.path.join(directory, ref.name)
    private_dir(directory)
    if os.path.isfile(target):
        return target
    try:
        fs, remote = pafs.FileSystem.from_uri(ref.location)
    except Exception as e:
        raise ValueError(
            f"model '{ref.shown}': pyarrow.fs cannot open this URI: {_scrubbed(e, ref.location)}"
        ) from None
    try:
        src = fs.open_input_stream(remote)
    except Exception as e:
        raise FileNotFoundError(
            f"model '{ref.shown}': cannot read it: {_scrubbed(e, ref.location)}"
        ) from None
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
                f"model '{ref.shown}': downloaded sha256 is {digest.hexdigest()}, "
                f"expected {ref.sha256}"
            )
        os.replace(tmp, target)  # atomic: readers see the old state or the whole file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
