"""Resumable writes (``torchspark.predict_to``): a driver killed mid-job, then resumed.

spark_resume_job.py runs the job from its own driver process (started when
this module starts). The test kills that process group with SIGKILL once a
chunk has committed and a later chunk's task is writing (seen from the files,
not guessed with a sleep), then, from this process's SparkSession (a new
driver):

- before resuming, readers of the output see exactly the committed chunks'
  rows, not the staged rows of the chunk that was cut short;
- the resumed call scores only the chunks that had not committed (its result
  and the commit records say which) and the output holds every input id
  exactly once (count, distinct count, anti-joins both ways) with predictions
  equal to an uninterrupted run's and to eager PyTorch's;
- a changed model and a changed input row each refuse to resume, saying what
  changed; ``resume=False`` starts over.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import background_job
import pytest
import torch

import torchspark

pytest.importorskip("pyspark.sql")
pytestmark = pytest.mark.spark

KILL_TEST = "test_a_killed_job_resumes_where_it_stopped"
TIMEOUT = 240.0


# Started when this module starts (if its test is selected), so that it overlaps the tests.
resume_job = background_job.fixture("resume_job", "spark_resume_job.py", KILL_TEST)


def commits(out) -> dict[int, dict]:
    folder = out / "_torchspark" / "commits"
    if not folder.is_dir():
        return {}
    records = {}
    for name in os.listdir(folder):
        if name.startswith("chunk-") and name.endswith(".json"):
            records[int(name[6:11])] = json.loads((folder / name).read_text())
    return records


def staged_partitions(out) -> set[int]:
    """Input partitions with a task file in staging."""
    found = set()
    staging = out / "_torchspark" / "staging"
    for _, _, files in os.walk(staging):
        found |= {int(f[5:10]) for f in files if f.startswith("part-")}
    return found


def cut_short(job: dict) -> tuple[dict[int, dict], set[int]]:
    """Kills the job's process group once a chunk committed and a partition of
    a chunk not committed has a staging file; the commits and those partitions."""
    out = job["workdir"] / "scored"
    proc = job["proc"]
    deadline = job["started"] + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        staged = staged_partitions(out)
        committed = {p for r in commits(out).values() for p in r["partitions"]}
        if committed and staged - committed:
            break
        time.sleep(0.01)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = (job["workdir"] / "job.log").read_text(errors="replace")
    assert alive, "the job ended before it was caught between chunks:\n" + log[-4000:]
    records = commits(out)
    committed = {p for r in records.values() for p in r["partitions"]}
    return records, staged_partitions(out) - committed


def by_id(table) -> dict[int, float]:
    ids, predictions = table.column("id").to_pylist(), table.column("prediction").to_pylist()
    return dict(zip(ids, predictions, strict=True))


def exactly_once(scored, df, rows: int) -> None:
    assert scored.count() == rows
    assert scored.select("id").distinct().count() == rows
    assert df.join(scored, "id", "left_anti").count() == 0
    assert scored.join(df, "id", "left_anti").count() == 0


@pytest.mark.slow
def test_a_killed_job_resumes_where_it_stopped(spark, resume_job, tmp_path):
    if resume_job is None:
        pytest.skip("no Java runtime for Spark")
    from pyspark.sql import functions as F
    from spark_resume_job import CHUNK_PARTITIONS, FEATURES, PARTITIONS, ROWS, frame, module

    # The kill comes from a thread watching the job's files; meanwhile this
    # driver runs the uninterrupted job and the eager reference.
    watcher = concurrent.futures.ThreadPoolExecutor(1)
    killed = watcher.submit(cut_short, resume_job)
    watcher.shutdown(wait=False)
    out = resume_job["workdir"] / "scored"
    model = str(resume_job["workdir"] / "model.pt")
    df = frame(spark)
    source = df.toArrow().sort_by("id")
    x = torch.tensor(source.column("features").to_pylist(), dtype=torch.float32)
    with torch.no_grad():
        expected = module()(x)
    partition_of = {r.id: r.p for r in df.select("id", F.spark_partition_id().alias("p")).collect()}
    while not os.path.exists(model):  # the job exports it first (the watcher fails if it dies)
        assert not killed.done() or killed.exception() is None, killed.exception()
        time.sleep(0.05)
    whole = tmp_path / "whole"
    uninterrupted = torchspark.predict_to(
        df, model, str(whole), inputs="features", keep=["id"], chunk_partitions=PARTITIONS
    )
    assert uninterrupted.written == [0] and uninterrupted.skipped == []
    reference = by_id(spark.read.parquet(str(whole)).toArrow())
    ids = list(range(ROWS))
    assert sorted(reference) == ids
    torch.testing.assert_close(torch.tensor([reference[i] for i in ids]), expected)

    records, cut = killed.result(timeout=TIMEOUT)
    chunks = PARTITIONS // CHUNK_PARTITIONS
    assert 1 <= len(records) < chunks, records
    assert cut, "no task of an uncommitted chunk had started writing"

    # What readers see after the crash: the committed chunks' rows, each once,
    # none of the partitions that were staged but not committed.
    committed = sorted(p for r in records.values() for p in r["partitions"])
    seen_ids = spark.read.parquet(str(out)).toArrow().column("id").to_pylist()
    assert len(seen_ids) == len(set(seen_ids)) == sum(sum(r["rows"]) for r in records.values())
    assert sorted({partition_of[i] for i in seen_ids}) == committed
    assert not cut & {partition_of[i] for i in seen_ids}

    # Resumed from another driver (this one): only the missing chunks are scored.
    resumed = torchspark.predict_to(df, model, str(out), inputs="features", keep=["id"])
    assert resumed.skipped == sorted(records)
    assert resumed.written == [c for c in range(chunks) if c not in records]
    assert resumed.rows == ROWS
    assert resumed.rows_written == ROWS - len(seen_ids)
    after = commits(out)
    assert all(after[c] == records[c] for c in records)  # the killed run's commits, untouched
    assert len({r["run"] for r in after.values()}) == 2
    assert (out / "_SUCCESS").exists() and not (out / "_torchspark" / "staging").exists()
    scored = spark.read.parquet(str(out))
    exactly_once(scored, df, ROWS)

    # Equal to the uninterrupted run and to eager PyTorch.
    got = by_id(scored.toArrow())
    assert sorted(got) == ids
    torch.testing.assert_close(
        torch.tensor([got[i] for i in ids]), torch.tensor([reference[i] for i in ids])
    )
    torch.testing.assert_close(torch.tensor([got[i] for i in ids]), expected)

    # A changed model, option or input row: refused, saying what changed.
    other = torchspark.export(module(seed=8), torch.randn(4, FEATURES), str(tmp_path / "other.pt"))
    with pytest.raises(torchspark.ResumeError) as error:
        torchspark.predict_to(df, other, str(out), inputs="features", keep=["id"])
    message = str(error.value)
    assert "the model: sha256" in message and "other.pt" in message and "model.pt" in message
    assert "resume=False" in message and "new path" in message
    with pytest.raises(
        torchspark.ResumeError, match="option output: 'prediction' then, 'score' now"
    ):
        torchspark.predict_to(df, model, str(out), inputs="features", keep=["id"], output="score")
    changed = ROWS // PARTITIONS * 3 + 5  # a row of partition 3
    with pytest.raises(torchspark.ResumeError) as error:
        torchspark.predict_to(
            frame(spark, changed_id=changed), model, str(out), inputs="features", keep=["id"]
        )
    message = str(error.value)
    assert "the input's rows in 1 of 8 partitions" in message and "partitions 3 (" in message
    assert "the model" not in message and "resume=False" in message
    assert spark.read.parquet(str(out)).count() == ROWS  # refusals change nothing

    # resume=False: the earlier output deleted, every row scored again (the
    # other model, in one chunk), the output whole once more.
    again = torchspark.predict_to(
        df, other, str(out), inputs="features", keep=["id"], resume=False, chunk_partitions=8
    )
    assert again.skipped == [] and again.written == [0] and again.rows_written == ROWS
    records = commits(out)
    assert list(records) == [0] and records[0]["run"] not in {r["run"] for r in after.values()}
    scored = spark.read.parquet(str(out))
    exactly_once(scored, df, ROWS)
    with torch.no_grad():
        expected = module(seed=8)(x)
    fresh = by_id(scored.toArrow())
    torch.testing.assert_close(torch.tensor([fresh[i] for i in ids]), expected)


def test_a_path_holding_other_files_is_left_alone(spark, tmp_path):
    from spark_resume_job import FEATURES, frame, module

    model = torchspark.export(module(), torch.randn(4, FEATURES), str(tmp_path / "model.pt"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.csv").write_text("a,b\n")
    df = frame(spark).limit(8)
    for resume in (True, False):
        with pytest.raises(torchspark.ResumeError, match=r"holds \['notes.csv'\], which no"):
            torchspark.predict_to(
                df, model, str(taken), inputs="features", keep=["id"], resume=resume
            )
    assert os.listdir(taken) == ["notes.csv"]
    # A first run stopped before its manifest was written is no stranger.
    begun = tmp_path / "begun"
    (begun / "_torchspark" / "commits").mkdir(parents=True)
    result = torchspark.predict_to(df, model, str(begun), inputs="features", keep=["id"])
    assert result.rows == 8 and result.skipped == []


def test_a_commit_cut_short_between_its_renames_is_rolled_forward(spark, tmp_path):
    """A driver lost after a chunk's commit record, before all its files were
    renamed: the next run moves the rest, scores nothing again."""
    from spark_resume_job import FEATURES, frame, module

    model = torchspark.export(module(), torch.randn(4, FEATURES), str(tmp_path / "model.pt"))
    df = frame(spark).where("id % 20 = 0")  # 400 rows, 8 partitions
    out = tmp_path / "scored"
    first = torchspark.predict_to(df, model, str(out), inputs="features", keep=["id"])
    # Undo the last renames of chunk 0, as a crash between them would leave it.
    record = commits(out)[0]
    staged, name = record["files"][-1]
    (out / "_torchspark" / staged).parent.mkdir(parents=True)
    os.replace(out / name, out / "_torchspark" / staged)
    os.remove(out / "_SUCCESS")
    assert spark.read.parquet(str(out)).count() == first.rows - record["rows"][-1]

    again = torchspark.predict_to(df, model, str(out), inputs="features", keep=["id"])
    assert again.written == [] and again.skipped == list(range(first.chunks))
    assert (out / name).exists() and (out / "_SUCCESS").exists()
    exactly_once(spark.read.parquet(str(out)), df, 400)
