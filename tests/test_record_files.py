"""Task records as files (torchspark.spark.record_files), without Spark:
written by one side, read whole by the other, through a path or a URI."""

from __future__ import annotations

import os
import pickle

import pytest

from torchspark.spark.record_files import RecordFiles


@pytest.mark.parametrize("uri", [False, True])
def test_records_written_then_read_back_whole(tmp_path, uri):
    directory = f"file://{tmp_path}" if uri else str(tmp_path)
    sent = RecordFiles(directory, "run1")
    assert sent.value == []  # nothing written yet: no directory
    sent.add([{"partition": 0, "rows": 3}])
    sent.add([{"partition": 1, "rows": 4}, {"partition": 1, "rows": 5}])
    # A write under way (its temporary name) and another run are not read.
    with open(tmp_path / "run1" / ".partial.tmp", "wb") as f:
        f.write(pickle.dumps([{"partition": 9}]))
    RecordFiles(directory, "run2").add([{"partition": 7}])
    received = pickle.loads(pickle.dumps(sent))  # as the executors get it
    got = sorted(received.value, key=lambda r: (r["partition"], r["rows"]))
    assert got == [
        {"partition": 0, "rows": 3},
        {"partition": 1, "rows": 4},
        {"partition": 1, "rows": 5},
    ]
    assert sorted(os.listdir(tmp_path / "run1"))[0] == ".partial.tmp"
    assert len([n for n in os.listdir(tmp_path / "run1") if n.endswith(".pkl")]) == 2
