"""Bad rows: ``on_error="null"`` / ``"quarantine"``, ``max_bad_rows``, ``check_finite``.

A model that raises on a known set of rows (data-dependent, scripted), nulls a
converter refuses, token ids out of an embedding's range under a token
budget, NaN outputs: every good row's output equals eager PyTorch on that row
alone, the bad rows are exactly the known set, and rows in = rows scored +
rows set aside. First through ``worker.score`` on an engine (no Spark; Arrow
batches smaller and larger than the engine's batches, so that a model call
mixes rows of several Arrow batches), then through ``predict`` on Spark (both
routes: ``arrow_udf`` columns and ``mapInArrow``), with the quarantine on the
driver and in Parquet files. The ``local-cluster`` run is in
spark_cluster_job.py (test_spark.py).
"""

from __future__ import annotations

import glob
import os
import warnings

import pyarrow as pa
import pytest
import torch
from models import EMBED, VOCAB, ModelFiles

import torchspark
from torchspark import Input
from torchspark.spark import worker
from torchspark.spark.bad_rows import SYSTEMIC_ROWS, bad_row_policy

LIMIT = 1e5  # the model raises for a row whose first value is above this
BAD_VALUE = 1e6


class RaisesAbove(torch.nn.Module):
    """x [rows, 2] -> [rows]: x0 * 2 + x1, or raises if any row's x0 > LIMIT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 1e5).any()):
            raise ValueError("x0 above the limit")
        return x[:, 0] * 2 + x[:, 1]


class LogFirst(torch.nn.Module):
    """x [rows, 2] -> [rows]: log(x0) (NaN for x0 < 0) + x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x[:, 0]) + x[:, 1]


def _script(module: torch.nn.Module, path: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad_rows")
    return {
        "raises": _script(RaisesAbove(), str(d / "raises.pt")),
        "log": _script(LogFirst(), str(d / "log.pt")),
    }


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("bad_rows_models"))


def is_bad(i: int) -> bool:
    return i % 37 == 5 or i % 53 == 0


def table(n: int, bad=is_bad) -> pa.Table:
    """id, x = [x0, x1]: x0 = BAD_VALUE on bad rows, else a small value."""
    x0 = [BAD_VALUE if bad(i) else (i % 11) * 0.5 for i in range(n)]
    x = [[a, i * 0.25] for i, a in enumerate(x0)]
    return pa.table(
        {"id": pa.array(range(n), pa.int64()), "x": pa.array(x, pa.list_(pa.float32()))}
    )


def expected(t: pa.Table) -> dict[int, float]:
    """Eager, row by row, for the good rows."""
    module = RaisesAbove()
    out = {}
    for i, row in zip(t.column("id").to_pylist(), t.column("x").to_pylist(), strict=True):
        if row is not None and row[0] <= LIMIT:
            with torch.no_grad():
                out[i] = float(module(torch.tensor([row], dtype=torch.float32))[0])
    return out


def by_id(result: pa.Table, column: str) -> dict[int, object]:
    return dict(
        zip(result.column("id").to_pylist(), result.column(column).to_pylist(), strict=True)
    )


def run_score(engine, t: pa.Table, arrow_rows: int, policy, output_types=None, **kwargs):
    """``worker.score`` over ``t`` in Arrow batches of ``arrow_rows``: (outputs, stats).
    ``kwargs``: ``output`` (default "prediction"), ``bad_rows`` (a BadRowLog), ``stats``."""
    from pyspark.sql import types as T

    stats = kwargs.get("stats", worker.new_stats())
    outs = list(
        worker.score(
            engine,
            t.to_batches(max_chunksize=arrow_rows),
            ["id"],
            kwargs.get("output", "prediction"),
            "test",
            "id",
            stats,
            policy=policy,
            output_types=output_types or [T.FloatType()],
            bad_rows=kwargs.get("bad_rows"),
        )
    )
    return outs, stats


# ---------------------------------------------------------------------------
# The engine, without Spark


@pytest.mark.parametrize(("arrow_rows", "batch_size"), [(10, 64), (64, 16), (1000, 1000), (7, 7)])
def test_null_policy_isolates_exactly_the_bad_rows(files, arrow_rows, batch_size):
    t = table(1000)
    bad = {i for i in range(1000) if is_bad(i)}
    with torchspark.Engine(
        files["raises"], device="cpu", inputs=[Input("x")], batch_size=batch_size
    ) as engine:
        outs, stats = run_score(engine, t, arrow_rows, bad_row_policy("null"))
    # One output batch per Arrow batch, of its rows, in order.
    assert [o.num_rows for o in outs] == [b.num_rows for b in t.to_batches(arrow_rows)]
    result = pa.Table.from_batches(outs)
    assert result.column_names == ["id", "prediction", "_error"]
    assert result.column("id").to_pylist() == list(range(1000))
    got = dict(
        zip(result.column("id").to_pylist(), result.column("prediction").to_pylist(), strict=False)
    )
    errors = dict(
        zip(result.column("id").to_pylist(), result.column("_error").to_pylist(), strict=False)
    )
    assert {i for i, v in got.items() if v is None} == bad
    assert {i for i, e in errors.items() if e is not None} == bad
    assert {errors[i] for i in bad} == {"ModelError: builtins.ValueError: x0 above the limit"}
    want = expected(t)
    assert {i: got[i] for i in want} == pytest.approx(want, rel=1e-6)
    assert stats["rows"] == 1000 and stats["bad_rows"] == len(bad)
    assert stats["bad_row_reasons"] == {
        "ModelError: builtins.ValueError: x0 above the limit": len(bad)
    }
    assert stats["bad_row_examples"][0].startswith("Arrow batch 0, row 0 (id=0): ModelError")


@pytest.mark.parametrize("arrow_rows", [9, 250])
def test_quarantine_policy_leaves_bad_rows_out_and_keeps_them(files, arrow_rows):
    t = table(500)
    bad = sorted(i for i in range(500) if is_bad(i))
    with torchspark.Engine(files["raises"], device="cpu", inputs=[Input("x")]) as engine:
        log = worker.BadRowLog(bad_row_policy("quarantine"), "test", "id")
        outs, _ = run_score(engine, t, arrow_rows, bad_row_policy("quarantine"), bad_rows=log)
    result = pa.Table.from_batches(outs)
    assert result.column_names == ["id", "prediction"]
    scored_ids = result.column("id").to_pylist()
    set_aside = pa.Table.from_batches(log.set_aside)
    aside_ids = set_aside.column("id").to_pylist()
    # Rows in = rows scored + rows set aside; the set aside rows are the bad ones.
    assert sorted(scored_ids + aside_ids) == list(range(500))
    assert aside_ids == bad
    # Set aside with every column that crossed (the inputs too) and the error.
    assert set_aside.column_names == ["id", "x", "_error"]
    assert set_aside.column("x").to_pylist()[0][0] == BAD_VALUE
    assert set(set_aside.column("_error").to_pylist()) == {
        "ModelError: builtins.ValueError: x0 above the limit"
    }
    want = expected(t)
    got = dict(zip(scored_ids, result.column("prediction").to_pylist(), strict=True))
    assert got == pytest.approx(want, rel=1e-6)


def test_a_batch_of_only_bad_rows_is_left_out_or_nulled(files):
    t = table(40, bad=lambda i: i < 10)  # the first Arrow batch is all bad
    with torchspark.Engine(files["raises"], device="cpu", inputs=[Input("x")]) as engine:
        outs, stats = run_score(engine, t, 10, bad_row_policy("quarantine"))
        assert [o.num_rows for o in outs] == [10, 10, 10]  # nothing yielded for batch 0
        nulls, _ = run_score(engine, t, 10, bad_row_policy("null"))
    assert nulls[0].column("prediction").null_count == 10
    # Every batch has the same schema (Spark's writer requires it).
    assert all(o.schema == nulls[1].schema for o in nulls)
    assert stats["bad_rows"] == 10


def test_nulls_refused_by_the_converter_are_bad_rows(files):
    t = table(100, bad=lambda i: False)
    x = t.column("x").to_pylist()
    for i in (3, 50, 99):
        x[i] = None
    t = t.set_column(1, "x", pa.array(x, pa.list_(pa.float32())))
    with torchspark.Engine(files["raises"], device="cpu", inputs=[Input("x")]) as engine:
        outs, stats = run_score(engine, t, 30, bad_row_policy("null"))
    result = pa.Table.from_batches(outs)
    nulls = [i for i, v in enumerate(result.column("prediction").to_pylist()) if v is None]
    assert nulls == [3, 50, 99]
    (reason,) = stats["bad_row_reasons"]
    assert reason.startswith("NullValueError: column 'x': 1 null value;")
    want = expected(t)
    got = dict(
        zip(result.column("id").to_pylist(), result.column("prediction").to_pylist(), strict=False)
    )
    assert {i: got[i] for i in want} == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("max_tokens", [16, 64, "auto"])
def test_token_ids_out_of_range_under_a_token_budget(model_files, max_tokens):
    rows, bad = [], set()
    for i in range(300):
        row = [(i * 7 + k * 3) % (VOCAB - 1) + 1 for k in range(1 + (i * 5) % 9)]
        if i % 41 == 7:
            row[-1] = VOCAB + 3  # out of the embedding's range: the model call fails
            bad.add(i)
        rows.append(row)
    t = pa.table(
        {"id": pa.array(range(300), pa.int64()), "tokens": pa.array(rows, pa.list_(pa.int32()))}
    )
    from pyspark.sql import types as T

    types = [T.ArrayType(T.FloatType()), T.LongType(), T.LongType()]
    with torchspark.Engine(
        model_files.path("bag"),
        device="cpu",
        inputs=[Input("tokens", kind="pad")],
        max_tokens=max_tokens,
        batch_size=64,
    ) as engine:
        outs, stats = run_score(
            engine, t, 50, bad_row_policy("null"), types, output=["bag", "rows", "width"]
        )
    result = pa.Table.from_batches(outs)
    bags = result.column("bag").to_pylist()
    assert {i for i, v in enumerate(bags) if v is None} == bad
    emb = model_files.module("bag").emb
    for i, row in enumerate(rows):
        if i not in bad:
            with torch.no_grad():
                want = emb(torch.tensor(row)).sum(0)
            torch.testing.assert_close(torch.tensor(bags[i]), want, rtol=1e-5, atol=1e-5)
    (reason,) = stats["bad_row_reasons"]
    assert "index out of range" in reason
    assert EMBED == 3


def test_nonfinite_outputs_counted_then_made_bad_rows(files):
    negative = {4, 17, 18, 59}
    # log(-1) = NaN on the negative rows, finite elsewhere.
    x = [[-1.0 if i in negative else 1.0 + i % 5, i * 0.25] for i in range(60)]
    t = pa.table({"id": pa.array(range(60), pa.int64()), "x": pa.array(x, pa.list_(pa.float32()))})
    t = t.set_column(1, "x", pa.array(x, pa.list_(pa.float32())))
    with torchspark.Engine(files["log"], device="cpu", inputs=[Input("x")]) as engine:
        outs, stats = run_score(engine, t, 20, bad_row_policy("null"))
        assert stats["nonfinite"] == {"prediction": len(negative)}
        assert stats["bad_rows"] == 0  # counted, not bad rows, by default
        outs, stats = run_score(engine, t, 20, bad_row_policy("null", check_finite=True))
        result = pa.Table.from_batches(outs)
        nulls = {i for i, v in enumerate(result.column("prediction").to_pylist()) if v is None}
        assert nulls == negative
        assert stats["bad_row_reasons"] == {
            "ValueError: output 'prediction' is NaN or Inf": len(negative)
        }
        finite = result.column("prediction").to_pylist()
        for i in range(60):
            if i not in negative:
                assert finite[i] == pytest.approx(float(torch.log(torch.tensor(x[i][0]))) + x[i][1])
        # With on_error="raise", check_finite fails the task naming the row.
        with pytest.raises(
            ValueError,
            match=r"output 'prediction': 3 rows with NaN or Inf"
            r" \(first in row 4\).*Arrow batch 0 \(20 rows\), row 4 \(id=4\)",
        ):
            run_score(engine, t, 20, bad_row_policy(check_finite=True))


def test_max_bad_rows_fails_the_task_with_the_count_and_first_errors(files):
    t = table(400)  # 19 bad rows, the sixth (id=106) in the third Arrow batch
    with torchspark.Engine(files["raises"], device="cpu", inputs=[Input("x")]) as engine:
        with pytest.raises(
            torchspark.BadRowsError,
            match=r"test: 6 bad rows, more than "
            r"max_bad_rows=5 allows.*first errors: Arrow batch 0, row 0 \(id=0\)",
        ):
            run_score(engine, t, 50, bad_row_policy("null", max_bad_rows=5))
        # A fraction, checked on the task's rows at its end: 19/400 = 4.75%.
        with pytest.raises(
            torchspark.BadRowsError,
            match=r"19 bad rows, more than "
            r"max_bad_rows=0.04 \(16 of its 400 rows\)",
        ):
            run_score(engine, t, 50, bad_row_policy("quarantine", max_bad_rows=0.04))
        _, stats = run_score(engine, t, 50, bad_row_policy("quarantine", max_bad_rows=0.05))
        assert stats["bad_rows"] == 19
        _, stats = run_score(engine, t, 50, bad_row_policy("null", max_bad_rows=19))
        assert stats["bad_rows"] == 19


def test_every_row_failing_is_not_bad_rows(files):
    t = table(300, bad=lambda i: True)
    with torchspark.Engine(files["raises"], device="cpu", inputs=[Input("x")]) as engine:
        stats = worker.new_stats()
        with pytest.raises(
            torchspark.BadRowsError,
            match=rf"the first {SYSTEMIC_ROWS} rows all "
            "failed and none was scored: a broken model or input",
        ):
            run_score(engine, t, 300, bad_row_policy("null"), stats=stats)
        # Stopped there, not after bisecting the whole 300-row batch.
        assert stats["bad_rows"] == SYSTEMIC_ROWS
        # Allowed explicitly: every row is nulled.
        outs, stats = run_score(engine, t, 100, bad_row_policy("null", max_bad_rows=300))
    assert stats["bad_rows"] == 300
    assert sum(o.column("prediction").null_count for o in outs) == 300


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="on_error must be one of"):
        bad_row_policy("skip")
    with pytest.raises(ValueError, match="max_bad_rows applies with on_error="):
        bad_row_policy("raise", max_bad_rows=3)
    for wrong in (-1, 1.5, 0.0, True, "10"):
        with pytest.raises(ValueError, match="max_bad_rows must be"):
            bad_row_policy("null", max_bad_rows=wrong)
    with pytest.raises(ValueError, match="is where on_error='quarantine' writes"):
        bad_row_policy("null", quarantine="/tmp/q")
    with pytest.raises(TypeError, match="check_finite must be"):
        bad_row_policy("null", check_finite=1)


# ---------------------------------------------------------------------------
# On Spark

ROWS = 1200


@pytest.fixture(scope="module")
def spark_df(spark):
    # A bad row in the first rows too: the driver's probe must survive it.
    bad = "pmod(id, 37) = 5 or pmod(id, 53) = 0"
    x0 = f"case when {bad} then {BAD_VALUE} else pmod(id, 11) * 0.5 end"
    return spark.range(0, ROWS, 1, 3).selectExpr(
        "id", f"array(cast({x0} as float), cast(id * 0.25 as float)) as x", "concat('r', id) as tag"
    )


@pytest.fixture(scope="module")
def spark_expected(spark_df):
    source = spark_df.toArrow().sort_by("id")
    return source, expected(source), sorted(i for i in range(ROWS) if is_bad(i))


@pytest.mark.spark
@pytest.mark.parametrize("keep", [None, ["id", "tag"]])
@pytest.mark.parametrize("arrow_rows", [13, 1000])
def test_predict_on_error_null(spark, spark_df, spark_expected, files, keep, arrow_rows):
    _, want, bad = spark_expected
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
    try:
        scored = torchspark.predict(
            spark_df, files["raises"], inputs="x", keep=keep, on_error="null"
        )
        result = scored.toArrow().sort_by("id")
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert scored.columns == [*(keep or ["id", "x", "tag"]), "prediction", "_error"]
    assert scored.schema["prediction"].nullable
    assert result.column("id").to_pylist() == list(range(ROWS))
    got = dict(
        zip(result.column("id").to_pylist(), result.column("prediction").to_pylist(), strict=False)
    )
    assert sorted(i for i, v in got.items() if v is None) == bad
    assert {i: got[i] for i in want} == pytest.approx(want, rel=1e-6)
    errors = result.column("_error").to_pylist()
    assert sorted(i for i, e in enumerate(errors) if e) == bad
    report = torchspark.last_report()
    assert report.rows == ROWS and report.bad_rows == len(bad)
    assert report.bad_row_reasons == {
        "ModelError: builtins.ValueError: x0 above the limit": len(bad)
    }
    assert f"{len(bad)} bad rows" in str(report)


@pytest.mark.spark
def test_predict_quarantine_to_the_driver(spark, spark_df, spark_expected, files):
    _, want, bad = spark_expected
    scored = torchspark.predict(spark_df, files["raises"], inputs="x", on_error="quarantine")
    result = scored.toArrow().sort_by("id")
    report = torchspark.last_report()
    assert scored.columns == ["id", "x", "tag", "prediction"]
    scored_ids = result.column("id").to_pylist()
    assert scored_ids == sorted(set(range(ROWS)) - set(bad))
    got = dict(zip(scored_ids, result.column("prediction").to_pylist(), strict=True))
    assert got == pytest.approx(want, rel=1e-6)
    quarantined = report.quarantined(spark)
    rows = sorted(quarantined.collect(), key=lambda r: r.id)
    assert [r.id for r in rows] == bad
    assert quarantined.columns == ["id", "x", "tag", "_error"]
    assert rows[0].tag == f"r{bad[0]}" and rows[0].x[0] == BAD_VALUE
    assert report.rows == ROWS == len(scored_ids) + len(rows)


@pytest.mark.spark
def test_predict_quarantine_to_parquet(spark, spark_df, spark_expected, files, tmp_path):
    _, _, bad = spark_expected
    where = str(tmp_path / "quarantine")
    scored = torchspark.predict(
        spark_df, files["raises"], inputs="x", keep=["id"], on_error="quarantine", quarantine=where
    )
    assert scored.count() == ROWS - len(bad)
    report = torchspark.last_report()
    assert len(report.quarantine_files) == 3  # one per partition that set rows aside
    # A second action on the same DataFrame rewrites the same files: no duplicates.
    scored.write.format("noop").mode("overwrite").save()
    files_now = sorted(glob.glob(os.path.join(where, "*.parquet")))
    assert [os.path.basename(f) for f in files_now] == [
        os.path.basename(f) for f in report.quarantine_files
    ]
    assert not glob.glob(os.path.join(where, ".*"))  # no temporary file left
    back = spark.read.parquet(where)
    assert sorted(r.id for r in back.select("id").collect()) == bad
    assert back.columns == ["id", "x", "_error"]
    assert sorted(r.id for r in report.quarantined(spark).select("id").collect()) == bad


@pytest.mark.spark
def test_predict_on_error_raise_is_the_default(spark_df, files):
    with pytest.raises(Exception, match=r"x0 above the limit"):
        torchspark.predict(spark_df, files["raises"], inputs="x").collect()


@pytest.mark.spark
def test_torch_udf_on_error_null(spark, spark_df, spark_expected, files):
    from pyspark.sql import functions as F

    _, want, bad = spark_expected
    score = torchspark.torch_udf(files["raises"], return_type="float", on_error="null")
    result = spark_df.select("id", score(F.col("x")).alias("p")).toArrow().sort_by("id")
    got = by_id(result, "p")
    assert sorted(i for i, v in got.items() if v is None) == bad
    assert {i: got[i] for i in want} == pytest.approx(want, rel=1e-6)
    assert torchspark.last_report().bad_rows == len(bad)
    with pytest.raises(ValueError, match="a column function cannot leave rows out"):
        torchspark.torch_udf(files["raises"], return_type="float", on_error="quarantine")


class MeanPixel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3))


def test_images_that_do_not_decode_are_bad_rows(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(5)
    contents, bad = [], {2, 9, 10}
    for i in range(16):
        if i in bad:
            contents.append(b"\x89PNG\r\n\x1a\n truncated" if i == 2 else b"<html>no image</html>")
            continue
        buffer = io.BytesIO()
        size = (20 + i, 24)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
        contents.append(buffer.getvalue())
    t = pa.table({"id": pa.array(range(16), pa.int64()), "content": pa.array(contents)})
    path = torchspark.export(MeanPixel(), torch.rand(2, 3, 16, 16), str(tmp_path / "mean.pt"))
    spec = Input("content", kind="image", size=16)
    with torchspark.Engine(path, device="cpu", inputs=[spec]) as engine:
        outs, stats = run_score(engine, t, 6, bad_row_policy("null"))
        # The clean run: the good rows alone.
        good = t.filter(pa.array([i not in bad for i in range(16)]))
        clean, _ = run_score(engine, good, 6, bad_row_policy())
    result = pa.Table.from_batches(outs)
    got = by_id(result, "prediction")
    assert {i for i, v in got.items() if v is None} == bad
    want = by_id(pa.Table.from_batches(clean), "prediction")
    assert {i: got[i] for i in want} == want
    assert stats["bad_rows"] == 3 and all(
        r.startswith("ValueError: column 'content': cannot decode: ") and "row" not in r
        for r in stats["bad_row_reasons"]
    )
