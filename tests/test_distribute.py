"""Model files to executors: the trust model (issue "Try to break it", security).

A URI's credentials never reach a message or a log line; the cache
directories are refused when another user could write to them; ``sha256``
pins a downloaded file. No Spark needed: ``fetch`` is what an executor runs.
"""

from __future__ import annotations

import os

import pytest
import torch

import torchspark
from torchspark.distribute import ModelRef, fetch, redact

SECRET = "s3cr3t-T0KEN"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    root = tmp_path / "cache"
    monkeypatch.setenv("TORCHSPARK_CACHE", str(root))
    return str(root)


@pytest.fixture
def model(tmp_path) -> tuple[str, str]:
    path = str(tmp_path / "linear.pt")
    torchspark.export(torch.nn.Linear(2, 1), torch.ones(4, 2), path)
    return path, torchspark.distribute.sha256_file(path)


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (f"s3://AKIA:{SECRET}@bucket/m.pt", "s3://***@bucket/m.pt"),
        (f"https://host/m.pt?X-Amz-Signature={SECRET}", "https://host/m.pt?***"),
        (f"gs://bucket/m.pt#{SECRET}", "gs://bucket/m.pt?***"),
        ("hdfs://namenode:8020/models/m.pt", "hdfs://namenode:8020/models/m.pt"),
        ("/local/path/m.pt", "/local/path/m.pt"),
    ],
)
def test_redact_drops_user_info_and_query(location, shown):
    assert redact(location) == shown
    ref = ModelRef("uri", location)
    assert SECRET not in ref.name and SECRET not in ref.shown
    assert ref.name == "m.pt"


def test_errors_about_a_uri_never_show_its_secrets(cache):
    # A scheme pyarrow.fs does not know: its own message quotes the URI.
    ref = ModelRef("uri", f"nosuchfs://user:{SECRET}@host/models/m.pt?sig={SECRET}")
    with pytest.raises(
        ValueError, match=r"model 'nosuchfs://\*\*\*@host/models/m.pt\?\*\*\*'"
    ) as e:
        fetch(ref)
    assert SECRET not in str(e.value) and "user:" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is not None  # not chained in the text
    # A file:// URI with a query (as a signed URL has) that does not exist.
    missing = ModelRef("uri", f"file:///nonexistent/dir/m.pt?token={SECRET}")
    with pytest.raises((FileNotFoundError, ValueError)) as e:
        fetch(missing)
    assert SECRET not in str(e.value)


def test_a_downloaded_model_is_pinned_by_sha256(cache, model):
    path, digest = model
    uri = "file://" + path
    good = fetch(ModelRef("uri", uri, digest))
    with open(good, "rb") as a, open(path, "rb") as b:
        assert a.read() == b.read()
    assert good.startswith(cache)
    with pytest.raises(ValueError, match=r"downloaded sha256 is [0-9a-f]{64}, expected 0+$"):
        fetch(ModelRef("uri", uri, "0" * 64))
    # The cached copy is verified on every fetch, not only when downloaded.
    with open(good, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=rf"sha256 is [0-9a-f]{{64}}, expected {digest}"):
        fetch(ModelRef("uri", uri, digest))


def test_a_cache_others_can_write_is_refused(cache, model):
    path, digest = model
    uri = "file://" + path
    os.makedirs(cache, mode=0o700)
    os.chmod(cache, 0o777)  # as a shared /tmp directory would be
    with pytest.raises(PermissionError, match=r"cache directory '.*cache' is writable by another"):
        fetch(ModelRef("uri", uri, digest))
    from torchspark.export import export_cached

    with pytest.raises(PermissionError, match="writable by another user"):
        export_cached(torch.nn.Linear(2, 1), torch.ones(4, 2))
    os.chmod(cache, 0o755)
    assert fetch(ModelRef("uri", uri, digest)).startswith(cache)
    # A directory inside it made group-writable later is refused too.
    (inner,) = [d for d in os.listdir(cache) if d != "exports"]  # the download's directory
    os.chmod(os.path.join(cache, inner), 0o770)
    with pytest.raises(PermissionError, match=rf"'{os.path.join(cache, inner)}'.*mode 770"):
        fetch(ModelRef("uri", uri, digest))
