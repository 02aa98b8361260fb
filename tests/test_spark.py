"""torchspark on Spark: predict, arrow_predictor, torch_udf and last_report.

Every scored DataFrame is collected, sorted by ``id`` (each id exactly once) and
compared row by row with eager PyTorch on the same rows of the source. Data is
generated in the JVM from ``spark.range`` (deterministic, no Python workers
needed to make it); models are tiny and exported once per module.

``local[2,4]`` (the ``spark`` fixture in conftest.py) covers the input kinds,
outputs, nulls, empty and one-row partitions, driver-side errors and a Python
worker killed mid-partition. ``local-cluster[2,1,1024]`` (two executor JVMs)
runs in a subprocess, ``spark_cluster_job.py``, started in the background when
this module starts so that it overlaps the local tests.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import background_job
import pyarrow as pa
import pytest
import torch
from models import FEATURES, VOCAB, ModelFiles

import torchspark
from torchspark import Input

pytest.importorskip("pyspark.sql")

pytestmark = pytest.mark.spark

ROWS = 2000
PARTITIONS = 4
CLUSTER_TEST = "test_local_cluster_ships_the_model_to_each_executor"
CLUSTER_TIMEOUT = 480.0

# Columns made in the JVM from ``id``: tokens are 1..49 (0 is padding), 1 to 13 per row.
COLUMNS = [
    "id",
    f"transform(sequence(0, {FEATURES - 1}), i -> cast(sin(id * {FEATURES} + i) as float))"
    " as features",
    "cos(id * 0.37) as c0",
    "cast(pmod(id, 7) - 3 as int) as c1",
    "cast(sin(id * 1.3) as float) as c2",
    "transform(sequence(0, cast(pmod(id * 7, 13) as int)),"
    f" i -> cast(pmod(id * 31 + i * 17, {VOCAB - 1}) + 1 as int)) as tokens",
    "transform(sequence(0, 2), i -> cast(cos(id * 3 + i) as float)) as dense",
    "transform(sequence(0, 3), i -> cast(sin(id + i * 0.5) as float)) as a",
    "transform(sequence(0, 3), i -> cast(cos(id - i) as float)) as b",
    "concat('row-', id) as label",
]


# ---------------------------------------------------------------------------
# Models beyond tests/models.py


class MaskedMean(torch.nn.Module):
    """tokens [rows, L] (0 = padding) -> [rows]: a linear head on the mean of the
    non-pad token embeddings, so neither padding nor batching changes a row's output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.emb = torch.nn.Embedding(VOCAB, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(torch.float32)
        total = (self.emb(tokens) * mask).sum(1)
        return self.head(total / mask.sum(1).clamp(min=1.0)).squeeze(1)

    def reference(self, rows: list[list[int]]) -> torch.Tensor:
        """Eager, one row at a time, unpadded (an empty row has a zero mean)."""
        with torch.no_grad():
            means = [self.emb(torch.tensor(r)).mean(0) if r else torch.zeros(4) for r in rows]
            return self.head(torch.stack(means)).squeeze(1)


class DictHead(torch.nn.Module):
    """forward(x, y) -> {"diff": x - 2y, "score": [rows]}: argument order matters;
    exported by torchspark.export (a trace with strict=False keeps the dict)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"diff": x - 2 * y, "score": (x * y).sum(1) + x[:, 0]}


class Grid(torch.nn.Module):
    """x [rows, 2, 4] -> ([rows, 2, 4], [rows, 4] bool, [rows] float16): nested arrays
    in and out, and output dtypes Spark lacks (half -> float)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x * 2 - 1, (x > 0).any(1), x.to(torch.float16).sum((1, 2))


class SparkModels(ModelFiles):
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__(directory)
        masked, head, grid = MaskedMean(), DictHead(), Grid()
        torch.manual_seed(11)
        head1 = torch.nn.Linear(FEATURES, 1)  # [rows, 1]: one value per row
        tokens = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]] * 2)
        self._builders["masked_mean"] = (
            masked,
            lambda path: torchspark.export(masked, (tokens,), path),
        )
        self._builders["head1"] = (
            head1,
            lambda path: torchspark.export(head1, (torch.randn(4, FEATURES),), path),
        )
        self._builders["grid"] = (
            grid,
            lambda path: torchspark.export(grid, (torch.randn(4, 2, 4),), path),
        )
        self._builders["dict_head"] = (
            head,
            lambda path: torchspark.export(head, (torch.randn(4, 4), torch.randn(4, 4)), path),
        )


# ---------------------------------------------------------------------------
# Fixtures and helpers


# Started when this module starts (if its test is selected), so that it overlaps the tests.
cluster_job = background_job.fixture("cluster_job", "spark_cluster_job.py", CLUSTER_TEST)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> SparkModels:
    return SparkModels(tmp_path_factory.mktemp("spark_models"))


def frame(spark: Any, rows: int, partitions: int, start: int = 0) -> Any:
    return spark.range(start, start + rows, 1, partitions).selectExpr(*COLUMNS)


@pytest.fixture(scope="module")
def df(spark: Any) -> Any:
    return frame(spark, ROWS, PARTITIONS)


@pytest.fixture(scope="module")
def source(df: Any) -> pa.Table:
    return df.toArrow().sort_by("id")


@pytest.fixture(autouse=True)
def fresh_probes():
    """Each test sees the driver-side checks of a first predict (see _plan's cache)."""
    from torchspark.spark import plan

    plan._probed.clear()


def collect(scored: Any, expected_ids: list[int]) -> pa.Table:
    """The scored rows sorted by id: each expected id exactly once, nothing else."""
    table = scored.toArrow().sort_by("id")
    assert table.column("id").to_pylist() == expected_ids
    return table


def floats(table: pa.Table, column: str) -> torch.Tensor:
    return torch.tensor(table.column(column).to_pylist(), dtype=torch.float32)


def eager(module: torch.nn.Module, *inputs: torch.Tensor) -> Any:
    with torch.no_grad():
        return module(*inputs)


def ids(table: pa.Table) -> list[int]:
    return table.column("id").to_pylist()


def check_report(rows: int, tasks: int) -> torchspark.Report:
    report = torchspark.last_report()
    assert report is not None
    assert report.rows == rows
    assert report.tasks == tasks
    assert sorted(r["partition"] for r in report.task_records) == list(range(tasks))
    assert report.p50_ms <= report.p90_ms <= report.p99_ms
    assert report.errors == []
    assert report.devices == ["cpu"]
    return report


# ---------------------------------------------------------------------------
# Input kinds, outputs compared with eager PyTorch


def python_node(scored: Any) -> str:
    """Which Spark operator runs Python in ``scored``'s plan."""
    plan = scored._jdf.queryExecution().executedPlan().toString()
    return "ArrowEvalPython" if "ArrowEvalPython" in plan else "MapInArrow"


def test_array_column_matches_eager_and_keeps_other_columns(df, source, models):
    scored = torchspark.predict(df, models.path("mlp"), inputs="features", batch_size=256)
    # Every column kept, the input included, as withColumn does; on Spark 4.1+
    # an arrow_udf column, so that only the input crosses to Python.
    keep = df.columns
    assert scored.columns == [*keep, "prediction"]
    assert python_node(scored) == "ArrowEvalPython"
    assert scored.schema["prediction"].dataType.simpleString() == "array<float>"
    table = collect(scored, ids(source))
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)
    # Pass-through columns (scalars, arrays, strings) arrive untouched.
    assert table.select(keep).equals(source.select(keep))

    report = check_report(ROWS, PARTITIONS)
    assert report.models == ["mlp.pt (TorchScript)"]
    assert report.batch_sizes == [256]
    assert report.arrow_batches >= PARTITIONS
    assert report.model_calls >= ROWS // 256  # 500-row partitions in calls of <= 256 rows
    assert sorted(r["rows"] for r in report.task_records) == [ROWS // PARTITIONS] * PARTITIONS
    assert "2,000 rows in 4 tasks" in str(report)


def test_scalar_columns_gathered(df, source, models):
    scored = torchspark.predict(
        df, models.path("features3"), inputs=["c0", "c1", "c2"], keep=["id"]
    )
    assert scored.schema.simpleString() == "struct<id:bigint,prediction:array<float>>"
    table = collect(scored, ids(source))
    x = torch.stack([floats(source, c) for c in ("c0", "c1", "c2")], dim=1)
    torch.testing.assert_close(floats(table, "prediction"), eager(models.module("features3"), x))


def test_token_column_padded_with_token_budget(df, source, models):
    scored = torchspark.predict(
        df,
        models.path("masked_mean"),
        inputs=Input("tokens", kind="pad"),
        keep=["id", "label"],
        batch_size=64,
        max_tokens=96,
        sort_window=64,
    )
    assert scored.schema.simpleString() == "struct<id:bigint,label:string,prediction:float>"
    table = collect(scored, ids(source))
    assert table.column("label").equals(source.column("label"))
    expected = models.module("masked_mean").reference(source.column("tokens").to_pylist())
    torch.testing.assert_close(floats(table, "prediction"), expected)
    report = check_report(ROWS, PARTITIONS)
    # Batches hold at most 96 padded tokens: many model calls per Arrow batch.
    tokens = sum(len(r) for r in source.column("tokens").to_pylist())
    assert report.model_calls >= tokens / 96 > 10 * report.arrow_batches


def test_per_token_outputs_under_a_token_budget(df, source, models):
    """Token-classification style: with max_tokens an Arrow batch is scored in
    calls of different widths; per_token brings each row back at its Arrow
    batch's padded width, zero past its own length."""
    scored = torchspark.predict(
        df,
        models.path("per_token"),
        inputs=Input("tokens", kind="pad"),
        output=["per_token", "bag"],
        keep=["id"],
        batch_size=64,
        max_tokens=96,
        sort_window=64,
        per_token=[0],
    )
    assert scored.schema.simpleString() == (
        "struct<id:bigint,per_token:array<array<float>>,bag:array<float>>"
    )
    table = collect(scored, ids(source))
    module = models.module("per_token")
    rows = source.column("tokens").to_pylist()
    for got, tokens in zip(table.column("per_token").to_pylist(), rows, strict=True):
        got = torch.tensor(got).view(-1, 3)
        assert len(got) >= len(tokens)
        torch.testing.assert_close(got, module.reference([tokens], len(got))[0])
    torch.testing.assert_close(floats(table, "bag"), module.bag.reference(rows))


def test_named_inputs_for_a_multi_input_model(df, source, models):
    # forward(dense, tokens): the dict, in the other order, is matched by name.
    scored = torchspark.predict(
        df,
        models.path("tokens_dense"),
        inputs={"tokens": Input("tokens", kind="pad"), "dense": "dense"},
        keep=["id"],
        max_tokens=200,
    )
    table = collect(scored, ids(source))
    expected = models.module("tokens_dense").reference(
        floats(source, "dense"), source.column("tokens").to_pylist()
    )
    torch.testing.assert_close(floats(table, "prediction"), expected)


def test_tuple_outputs_become_numbered_columns(df, source, models):
    scored = torchspark.predict(df, models.path("tuple_out"), inputs="features", keep=["id"])
    assert scored.schema.simpleString() == (
        "struct<id:bigint,prediction_0:array<float>,prediction_1:float,prediction_2:bigint>"
    )
    table = collect(scored, ids(source))
    lin, total, argmax = eager(models.module("tuple_out"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction_0"), lin)
    torch.testing.assert_close(floats(table, "prediction_1"), total)
    assert table.column("prediction_2").to_pylist() == argmax.tolist()


def test_one_output_per_row_is_a_scalar_column(df, source, models):
    """[N, 1] (and [N]) outputs give a float column, as predict_batch_udf does."""
    scored = torchspark.predict(df, models.path("head1"), inputs="features", keep=["id"])
    assert scored.schema.simpleString() == "struct<id:bigint,prediction:float>"
    table = collect(scored, ids(source))
    expected = eager(models.module("head1"), floats(source, "features"))
    assert expected.shape == (ROWS, 1)
    torch.testing.assert_close(floats(table, "prediction"), expected.squeeze(1))
    fn = torchspark.torch_udf(models.path("head1"), example=torch.randn(2, FEATURES))
    assert fn.returnType.simpleString() == "float"
    got = df.select("id", fn("features").alias("s")).toArrow().sort_by("id")
    torch.testing.assert_close(floats(got, "s"), expected.squeeze(1))


def test_one_value_per_row_is_flattened_by_a_view():
    from torchspark.spark.outputs import per_row, record_batch

    column = torch.arange(5, dtype=torch.float32).view(5, 1)
    flat = per_row(column)
    assert flat.shape == (5,) and flat.data_ptr() == column.data_ptr()
    batch = record_batch(None, [], ["p"], [column])
    assert batch.column("p").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert batch.column("p").buffers()[1].address == column.data_ptr()  # no copy
    wide = torch.zeros(5, 2)
    assert per_row(wide) is wide
    assert per_row(torch.zeros(5, 1, 1)).shape == (5, 1, 1)


def test_default_keep_before_spark_4_1_runs_through_map_in_arrow(df, source, models, monkeypatch):
    from torchspark.spark import score

    monkeypatch.setattr(score, "_has_arrow_udf", lambda: False)  # pyspark < 4.1
    scored = torchspark.predict(df, models.path("mlp"), inputs="features")
    assert scored.columns == [*df.columns, "prediction"]
    assert python_node(scored) == "MapInArrow"
    table = collect(scored, ids(source))
    assert table.select(df.columns).equals(source.select(df.columns))
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)


def test_default_keep_with_several_outputs_and_a_failing_row(df, source, models):
    """Several outputs by default: one arrow_udf struct, expanded into columns and
    computed once per row; a failing row is named by the first column (id)."""
    scored = torchspark.predict(df, models.path("tuple_out"), inputs="features")
    assert scored.columns == [*df.columns, "prediction_0", "prediction_1", "prediction_2"]
    assert python_node(scored) == "ArrowEvalPython"
    table = collect(scored, ids(source))
    lin, total, argmax = eager(models.module("tuple_out"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction_0"), lin)
    torch.testing.assert_close(floats(table, "prediction_1"), total)
    assert table.column("prediction_2").to_pylist() == argmax.tolist()
    check_report(ROWS, PARTITIONS)  # each row scored once, not once per output

    bad = with_nulls(df, "features", f"id = {ROWS - 7}")
    with pytest.raises(Exception) as info:
        torchspark.predict(bad, models.path("mlp"), inputs="features").collect()
    text = str(info.value)
    assert "column 'features': 1 null value" in text
    assert re.search(
        rf"partition 3 attempt \d+, Arrow batch 0 \(500 rows\), row 493 \(id={ROWS - 7}\)", text
    ), text


def test_dict_outputs_named_by_keys(df, source, models):
    scored = torchspark.predict(
        df, models.path("dict_head"), inputs={"y": "b", "x": "a"}, keep=["id"]
    )
    assert scored.schema.simpleString() == "struct<id:bigint,diff:array<float>,score:float>"
    table = collect(scored, ids(source))
    expected = eager(models.module("dict_head"), floats(source, "a"), floats(source, "b"))
    torch.testing.assert_close(floats(table, "diff"), expected["diff"])
    torch.testing.assert_close(floats(table, "score"), expected["score"])


def test_nested_array_input_and_nested_outputs(df, source, models):
    grid = df.selectExpr("id", "transform(sequence(0, 1), j -> slice(features, j * 4 + 1, 4)) as g")
    scored = torchspark.predict(grid, models.path("grid"), inputs="g", output=["y", "pos", "half"])
    assert scored.schema.simpleString() == (
        "struct<id:bigint,g:array<array<float>>,y:array<array<float>>,pos:array<boolean>,"
        "half:float>"
    )
    table = collect(scored, ids(source))
    x = floats(source, "features").view(-1, 2, 4)
    y, pos, half = eager(models.module("grid"), x)
    torch.testing.assert_close(floats(table, "y"), y)
    assert table.column("pos").to_pylist() == pos.tolist()
    torch.testing.assert_close(floats(table, "half"), half.float())


def test_column_names_with_dots(df, source, models):
    dotted = df.selectExpr("id as `row.id`", "features as `f.x`")
    scored = torchspark.predict(dotted, models.path("mlp"), inputs="f.x")
    table = scored.toArrow().sort_by("row.id")
    assert table.column("row.id").to_pylist() == ids(source)
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)


def test_output_names_keep_and_a_matching_schema(df, source, models):
    from pyspark.sql import types as T

    path = models.path("tuple_out")
    ddl = "logits array<float>, total float, argmax bigint"
    scored = torchspark.predict(
        df,
        path,
        inputs="features",
        output=["logits", "total", "argmax"],
        keep=["label", "id"],
        schema=ddl,
    )
    assert scored.columns == ["label", "id", "logits", "total", "argmax"]
    table = collect(scored, ids(source))
    assert table.column("label").equals(source.column("label"))
    lin, total, argmax = eager(models.module("tuple_out"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "logits"), lin)
    torch.testing.assert_close(floats(table, "total"), total)
    assert table.column("argmax").to_pylist() == argmax.tolist()

    # The same schema as a StructType (nullability is not compared).
    struct = T.StructType(
        [
            T.StructField("logits", T.ArrayType(T.FloatType())),
            T.StructField("total", T.FloatType()),
            T.StructField("argmax", T.LongType()),
        ]
    )
    again = torchspark.predict(
        df, path, inputs="features", output=["logits", "total", "argmax"], schema=struct
    )
    assert again.columns[-3:] == ["logits", "total", "argmax"]


@pytest.mark.parametrize(
    "schema",
    [
        "prediction double",  # wrong type
        "score array<float>",  # wrong name
        "prediction array<float>, extra int",  # one column too many
    ],
)
def test_schema_mismatch_raises_on_the_driver(df, models, schema):
    with pytest.raises(ValueError, match=r"schema: the model's outputs .* prediction array<float>"):
        torchspark.predict(df, models.path("mlp"), inputs="features", schema=schema)


def test_arrow_predictor_with_map_in_arrow(df, source, models):
    fn = torchspark.arrow_predictor(df, models.path("mlp"), inputs="features", keep=["id"])
    assert isinstance(fn, torchspark.ArrowPredictor)
    assert fn.ref.kind == "path"  # local mode: the executors read the driver's file
    assert fn.schema.simpleString() == "struct<id:bigint,prediction:array<float>>"
    table = collect(df.mapInArrow(fn, fn.schema), ids(source))
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)
    check_report(ROWS, PARTITIONS)


def test_torch_udf_with_return_type(df, source, models):
    score = torchspark.torch_udf(models.path("mlp"), return_type="array<float>")
    scored = df.select("id", "label", score("features").alias("score"))
    table = collect(scored, ids(source))
    assert table.column("label").equals(source.column("label"))
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "score"), expected)
    check_report(ROWS, PARTITIONS)


def test_torch_udf_type_from_example_multi_output_is_a_struct(df, source, models):
    fn = torchspark.torch_udf(models.path("tuple_out"), example=torch.randn(2, FEATURES))
    assert fn.returnType.simpleString() == (
        "struct<prediction_0:array<float>,prediction_1:float,prediction_2:bigint>"
    )
    scored = df.select("id", fn("features").alias("s")).select("id", "s.*")
    table = collect(scored, ids(source))
    lin, total, argmax = eager(models.module("tuple_out"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction_0"), lin)
    torch.testing.assert_close(floats(table, "prediction_1"), total)
    assert table.column("prediction_2").to_pylist() == argmax.tolist()


def test_torch_udf_example_struct_fields_named_by_output(models):
    fn = torchspark.torch_udf(
        models.path("tuple_out"), example=torch.randn(2, FEATURES), output=["a", "b", "c"]
    )
    assert fn.returnType.fieldNames() == ["a", "b", "c"]


# ---------------------------------------------------------------------------
# nn.Module in place of a file: exported on the driver from the probe rows


@pytest.fixture
def export_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSPARK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exports"


def test_predict_takes_a_module(df, source, models, export_cache):
    mlp = models.module("mlp")
    scored = torchspark.predict(df, mlp, inputs="features", keep=["id"])
    table = collect(scored, ids(source))
    torch.testing.assert_close(floats(table, "prediction"), eager(mlp, floats(source, "features")))
    # Named inputs in another order than forward(dense, tokens), one of them padded.
    tokens_dense = models.module("tokens_dense")
    scored = torchspark.predict(
        df,
        tokens_dense,
        inputs={"tokens": Input("tokens", kind="pad"), "dense": "dense"},
        keep=["id"],
        max_tokens=200,
    )
    table = collect(scored, ids(source))
    expected = tokens_dense.reference(floats(source, "dense"), source.column("tokens").to_pylist())
    torch.testing.assert_close(floats(table, "prediction"), expected)
    assert len(os.listdir(export_cache)) == 2  # one verified file per module
    # The same module again: the cached file, no new export.
    fn = torchspark.arrow_predictor(
        df.select("id", "c0", "c1", "c2"), models.module("features3"), inputs=["c0", "c1", "c2"]
    )
    assert fn.ref.location.startswith(str(export_cache))
    assert len(os.listdir(export_cache)) == 3


class _Branchy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 0):
            return x * 2
        return -x


def test_a_module_that_would_export_wrong_fails_on_the_driver(df, export_cache):
    with pytest.raises(torchspark.ExportError, match=r"bool\(x\.mean\(\) > 0\)"):
        torchspark.predict(df, _Branchy(), inputs="features")


def test_a_function_or_an_empty_frame_cannot_be_exported(df, export_cache):
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module or the path"):
        torchspark.predict(df, lambda x: x, inputs="features")
    with pytest.raises(ValueError, match=r"DataFrame is empty, so there are no rows to export"):
        torchspark.predict(df.limit(0), torch.nn.Linear(FEATURES, 1), inputs="features")


def test_torch_udf_takes_a_module_with_an_example(df, source, models, export_cache):
    mlp = models.module("mlp")
    with pytest.raises(ValueError, match=r"MLP module needs example="):
        torchspark.torch_udf(mlp, return_type="array<float>")
    score = torchspark.torch_udf(mlp, example=torch.randn(4, FEATURES))
    table = collect(df.select("id", score("features").alias("s")), ids(source))
    torch.testing.assert_close(floats(table, "s"), eager(mlp, floats(source, "features")))


def test_torch_udf_gather_and_pad_inputs(df, source, models):
    gathered = torchspark.torch_udf(
        models.path("features3"), return_type="array<float>", inputs="gather"
    )
    mixed = torchspark.torch_udf(
        models.path("tokens_dense"), return_type="array<float>", inputs=["tensor", "pad"]
    )
    scored = df.select(
        "id", gathered("c0", "c1", "c2").alias("g"), mixed("dense", "tokens").alias("m")
    )
    table = collect(scored, ids(source))
    x = torch.stack([floats(source, c) for c in ("c0", "c1", "c2")], dim=1)
    torch.testing.assert_close(floats(table, "g"), eager(models.module("features3"), x))
    expected = models.module("tokens_dense").reference(
        floats(source, "dense"), source.column("tokens").to_pylist()
    )
    torch.testing.assert_close(floats(table, "m"), expected)


def test_torch_udf_struct_return_type_with_own_field_names(df, source, models):
    fn = torchspark.torch_udf(
        models.path("tuple_out"), return_type="struct<lin: array<float>, total: float, top: bigint>"
    )
    scored = df.select("id", fn("features").alias("s")).select("id", "s.*")
    table = collect(scored, ids(source))
    lin, total, argmax = eager(models.module("tuple_out"), floats(source, "features"))
    assert table.column("top").to_pylist() == argmax.tolist()
    torch.testing.assert_close(floats(table, "lin"), lin)
    torch.testing.assert_close(floats(table, "total"), total)


# ---------------------------------------------------------------------------
# Partitions: empty, one row


def test_empty_partitions(spark, models):
    # 3 rows over 8 partitions: 5 partitions are empty; a filter empties two more.
    module = models.module("masked_mean")
    path = models.path("masked_mean")
    small = frame(spark, 3, 8)
    scored = torchspark.predict(small, path, inputs=Input("tokens", kind="pad"), keep=["id"])
    rows = small.toArrow().sort_by("id")
    table = collect(scored, [0, 1, 2])
    expected = module.reference(rows.column("tokens").to_pylist())
    torch.testing.assert_close(floats(table, "prediction"), expected)
    report = check_report(3, 8)
    assert sorted(r["rows"] for r in report.task_records) == [0] * 5 + [1] * 3

    filtered = frame(spark, ROWS, PARTITIONS).filter(f"id < 5 or id >= {ROWS - 5}")
    scored = torchspark.predict(filtered, path, inputs=Input("tokens", kind="pad"), keep=["id"])
    rows = filtered.toArrow().sort_by("id")
    table = collect(scored, [*range(5), *range(ROWS - 5, ROWS)])
    expected = module.reference(rows.column("tokens").to_pylist())
    torch.testing.assert_close(floats(table, "prediction"), expected)
    report = check_report(10, PARTITIONS)
    assert [r["rows"] for r in report.task_records] == [5, 0, 0, 5]


def test_empty_dataframe_with_schema(df, models):
    empty = df.filter("id < 0")
    scored = torchspark.predict(
        empty, models.path("mlp"), inputs="features", keep=["id"], schema="prediction array<float>"
    )
    assert scored.count() == 0


def test_last_report_is_the_last_job_even_an_empty_one(spark, df, models):
    path = models.path("mlp")
    first = torchspark.predict(df, path, inputs="features", keep=["id"])
    first.write.format("noop").mode("overwrite").save()
    assert torchspark.last_report().rows == ROWS
    # No partitions at all: the job runs no task, so no record; its report says so.
    empty = df.select("id", "features").limit(0)  # the optimizer makes it a local relation
    scored = torchspark.predict(
        empty, path, inputs="features", keep=["id"], schema="prediction array<float>"
    )
    assert scored.count() == 0
    report = torchspark.last_report()
    assert (report.rows, report.tasks, report.failed, report.errors) == (0, 0, False, [])
    assert "no rows" in str(report)
    # The first DataFrame again: the newest job is the one reported.
    first.write.format("noop").mode("overwrite").save()
    report = torchspark.last_report()
    assert (report.rows, report.tasks) == (ROWS, PARTITIONS)


def test_empty_dataframe_without_schema_asks_for_one(df, models):
    with pytest.raises(ValueError, match=r"empty.*schema="):
        torchspark.predict(df.filter("id < 0"), models.path("mlp"), inputs="features")


def test_one_row_partitions(spark, models):
    small = frame(spark, 6, 6, start=100)
    scored = torchspark.predict(small, models.path("mlp"), inputs="features", keep=["id"])
    rows = small.toArrow().sort_by("id")
    table = collect(scored, list(range(100, 106)))
    expected = eager(models.module("mlp"), floats(rows, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)
    report = check_report(6, 6)
    assert [r["rows"] for r in report.task_records] == [1] * 6


# ---------------------------------------------------------------------------
# Nulls


def with_nulls(df: Any, column: str, condition: str) -> Any:
    cols = [
        f"case when {condition} then null else {c} end as {c}" if c == column else c
        for c in df.columns
    ]
    return df.selectExpr(*cols)


def test_null_array_row_fails_the_job_naming_the_column(df, models):
    # The null is in the last partition: past the driver's probe rows, so a task fails.
    bad = with_nulls(df, "features", f"id = {ROWS - 7}")
    scored = torchspark.predict(bad, models.path("mlp"), inputs="features", keep=["id"])
    with pytest.raises(Exception) as info:
        scored.collect()
    text = str(info.value)
    assert "NullValueError" in text
    assert "column 'features': 1 null value" in text
    report = torchspark.last_report()
    assert report.failed and "NullValueError: column 'features'" in report.errors[-1]
    assert str(report).startswith("FAILED: ")
    # Where: partition 3 holds ids 1500..1999 in one Arrow batch; id 1993 is its row 493.
    assert re.search(
        r"\[at stage \d+ partition 3 attempt \d+, Arrow batch 0 \(500 rows\), row 493 "
        rf"\(id={ROWS - 7}\)\]",
        text,
    ), text
    # The engine's error is the one raised, not a chain through torchspark's bookkeeping.
    assert "During handling of the above exception" not in text
    assert "direct cause" not in text


def test_model_error_in_a_task_names_the_rows(df, models):
    """A model raising on a batch in a task: the error gives the rows of that model
    call within the Arrow batch and the id of the first."""
    bad = df.selectExpr("id", "transform(features, v -> abs(v) * if(id = 1850, -1, 1)) as features")
    scored = torchspark.predict(
        bad, models.path("negative_raises"), inputs="features", keep=["id"], batch_size=100
    )
    with pytest.raises(Exception) as info:
        scored.collect()
    text = str(info.value)
    assert "ModelError" in text and "negative input" in text
    where = re.search(
        r"partition 3 attempt \d+, Arrow batch 0 \(500 rows\), rows \[(\d+), (\d+)\) "
        r"\(first: id=(\d+)\)\]",
        text,
    )
    assert where, text
    begin, end, first = (int(g) for g in where.groups())
    assert begin <= 350 < end and first == 1500 + begin


def test_null_in_the_probe_rows_raises_on_the_driver(df, models):
    bad = with_nulls(df, "features", "id = 3")
    with pytest.raises(torchspark.NullValueError, match=r"probe batch.*column 'features'"):
        torchspark.predict(bad, models.path("mlp"), inputs="features")


def test_null_array_rows_filled(df, source, models):
    bad = with_nulls(df, "features", "pmod(id, 97) = 5")
    scored = torchspark.predict(
        bad, models.path("mlp"), inputs=Input("features", nulls="fill", fill=0), keep=["id"]
    )
    table = collect(scored, ids(source))
    x = floats(source, "features")
    x[torch.tensor(ids(source)) % 97 == 5] = 0.0
    torch.testing.assert_close(floats(table, "prediction"), eager(models.module("mlp"), x))


def test_null_scalars_filled_in_a_gather(df, source, models):
    bad = with_nulls(with_nulls(df, "c0", "pmod(id, 5) = 0"), "c1", "pmod(id, 7) = 1")
    scored = torchspark.predict(
        bad,
        models.path("features3"),
        inputs=Input(["c0", "c1", "c2"], nulls="fill", fill=-2),
        keep=["id"],
    )
    table = collect(scored, ids(source))
    x = torch.stack([floats(source, c) for c in ("c0", "c1", "c2")], dim=1)
    i = torch.tensor(ids(source))
    x[i % 5 == 0, 0] = -2.0
    x[i % 7 == 1, 1] = -2.0
    torch.testing.assert_close(floats(table, "prediction"), eager(models.module("features3"), x))


def test_null_token_rows_filled_as_empty(df, source, models):
    bad = with_nulls(df, "tokens", "pmod(id, 11) = 4")
    scored = torchspark.predict(
        bad,
        models.path("masked_mean"),
        inputs=Input("tokens", kind="pad", nulls="fill"),
        keep=["id"],
    )
    table = collect(scored, ids(source))
    rows = [
        [] if i % 11 == 4 else r
        for i, r in zip(ids(source), source["tokens"].to_pylist(), strict=True)
    ]
    expected = models.module("masked_mean").reference(rows)
    torch.testing.assert_close(floats(table, "prediction"), expected)


# ---------------------------------------------------------------------------
# Errors raised on the driver, before any task


def test_missing_column(df, models):
    with pytest.raises(ValueError, match=r"input column 'nope': not in the DataFrame"):
        torchspark.predict(df, models.path("mlp"), inputs="nope")
    with pytest.raises(ValueError, match=r"input column 'nope'"):
        torchspark.predict(df, models.path("features3"), inputs=["c0", "nope", "c2"])
    with pytest.raises(ValueError, match=r"keep: columns \['nope'\]"):
        torchspark.predict(df, models.path("mlp"), inputs="features", keep=["id", "nope"])


def test_unsupported_column_types(df, models):
    with pytest.raises(TypeError, match=r"input column 'label' \(kind 'tensor'\).*got string"):
        torchspark.predict(df, models.path("mlp"), inputs="label")
    with pytest.raises(TypeError, match=r"input column 'label' \(kind 'gather'\).*got string"):
        torchspark.predict(df, models.path("features3"), inputs=["c0", "c1", "label"])
    with pytest.raises(TypeError, match=r"'features' \(kind 'pad'\).*got array<float>"):
        torchspark.predict(df, models.path("bag"), inputs=Input("features", kind="pad"))
    with pytest.raises(TypeError, match="inputs: expected"):
        torchspark.predict(df, models.path("mlp"), inputs=42)


def test_models_that_cannot_load(df, models, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a model")
    with pytest.raises(Exception, match=r"model '.*garbage\.pt'.*not a zip archive"):
        torchspark.predict(df, str(garbage), inputs="features")
    with pytest.raises(FileNotFoundError, match=r"no_such_model\.pt"):
        torchspark.predict(df, str(tmp_path / "no_such_model.pt"), inputs="features")
    with pytest.raises(ValueError, match="sha256"):
        torchspark.predict(df, models.path("mlp"), inputs="features", sha256="0" * 64)


def test_model_that_fails_on_the_probe_batch(df, models):
    # features has 8 columns; features3 takes 3: the error names the column and both widths.
    with pytest.raises(torchspark.ModelError) as info:
        torchspark.predict(df, models.path("features3"), inputs="features")
    message = str(info.value)
    assert message.startswith("model 'features3.pt' on a probe batch of 16 rows (on the driver)")
    assert "column 'features' gives [N, 8]; the model's first layer expects 3" in message
    assert "Traceback" not in message and info.value.__cause__ is None
    with pytest.raises(torchspark.ModelError) as info:
        torchspark.predict(df, models.path("features5"), inputs=["c0", "c1", "c2"])
    assert "columns ['c0', 'c1', 'c2'] give [N, 3]; the model's first layer expects 5" in str(
        info.value
    )


def test_named_inputs_must_match_the_arguments(df, models):
    with pytest.raises(ValueError, match=r"missing \['y'\], unexpected \['z'\]"):
        torchspark.predict(df, models.path("dict_head"), inputs={"x": "a", "z": "b"})
    with pytest.raises(ValueError, match=r"missing \['y'\]"):
        torchspark.predict(df, models.path("dict_head"), inputs={"x": "a"})


def test_output_names_and_options_checked(df, models):
    with pytest.raises(ValueError, match="returns 3 outputs but 2 names"):
        torchspark.predict(df, models.path("tuple_out"), inputs="features", output=["a", "b"])
    with pytest.raises(ValueError, match="clash"):
        torchspark.predict(df, models.path("mlp"), inputs="features", output="label")
    with pytest.raises(TypeError, match=r"unexpected engine options \['bogus'\]"):
        torchspark.predict(df, models.path("mlp"), inputs="features", bogus=1)


# ---------------------------------------------------------------------------
# Logs, faults


def test_per_task_log_line(df, models, monkeypatch, capfd, caplog):
    """The line each task logs (model, device, batch size, rows), through the
    ``torchspark`` logger at INFO: not printed unless logging is configured so.
    In local mode a Python worker's log goes to the JVM's stderr, which pytest
    cannot capture, so the predictor runs here on the driver;
    spark_cluster_job.py reads the executors' lines from their stderr files."""
    monkeypatch.delenv("TORCHSPARK_LOG_LEVEL", raising=False)
    fn = torchspark.arrow_predictor(
        df, models.path("mlp"), inputs="features", keep=["id"], batch_size=64
    )
    batches = df.limit(100).toArrow().to_batches()
    with caplog.at_level(logging.INFO, logger="torchspark"):
        out = pa.Table.from_batches(list(fn(iter(batches))))
    assert out.num_rows == 100 and out.column_names == ["id", "prediction"]
    lines = [r.getMessage() for r in caplog.records if r.name == "torchspark"]
    assert any(
        re.fullmatch(
            r"driver: model 'mlp\.pt' \(TorchScript\) on cpu, batch_size 64, "
            rf"intra-op threads \d+: 100 rows in {len(batches)} Arrow batches, [\d.]+ s",
            line,
        )
        for line in lines
    ), lines
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "torchspark")
    assert "torchspark:" not in capfd.readouterr().err  # nothing printed by default


def _dies_after_first_batch(fn: Any, partition: int) -> Any:
    """``fn`` wrapped so that attempt 0 of ``partition`` exits its Python worker
    right after yielding its first output batch (a test double: the product has
    no crash switch)."""

    def wrapper(batches: Any) -> Any:
        from pyspark import TaskContext

        task = TaskContext.get()
        crash = task.partitionId() == partition and task.attemptNumber() == 0
        for batch in fn(batches):
            yield batch
            if crash:
                os._exit(17)

    return wrapper


def test_python_worker_killed_mid_partition_is_retried(spark, df, source, models):
    """Attempt 0 of partition 1 exits its Python worker after the first of 5
    Arrow batches; Spark retries the task and each id comes out once, with the
    predictions of a clean run."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "100")
    try:
        path = models.path("mlp")
        clean = collect(torchspark.predict(df, path, inputs="features", keep=["id"]), ids(source))
        fn = torchspark.arrow_predictor(df, path, inputs="features", keep=["id"])
        crashed = df.mapInArrow(_dies_after_first_batch(fn, partition=1), fn.schema)
        table = collect(crashed, ids(source))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    torch.testing.assert_close(floats(table, "prediction"), floats(clean, "prediction"))
    report = check_report(ROWS, PARTITIONS)
    attempts = {r["partition"]: r["attempt"] for r in report.task_records}
    assert attempts == {0: 0, 1: 1, 2: 0, 3: 0}
    assert {r["arrow_batches"] for r in report.task_records} == {5}


# ---------------------------------------------------------------------------
# local-cluster: two executor JVMs


@pytest.mark.slow
def test_local_cluster_ships_the_model_to_each_executor(cluster_job):
    r = background_job.result(cluster_job, CLUSTER_TIMEOUT)
    rows, partitions = r["rows"], r["partitions"]

    assert r["master"] == "local-cluster[2,1,1024]" and r["executors"] == 2
    # Shipped with addFile: a SparkFiles name carrying the digest.
    assert r["ref_kind"] == "sparkfile"
    assert re.fullmatch(r"[0-9a-f]{16}-cluster_mlp\.pt", r["ref_location"])
    # Exactly one output row per input id.
    assert r["count"] == r["distinct_ids"] == rows
    assert r["missing_ids"] == 0 and r["extra_ids"] == 0
    assert r["ids_equal"] and r["max_abs_diff"] < 1e-5
    report = r["report"]
    assert report["rows"] == rows and report["tasks"] == partitions
    assert report["partitions"] == list(range(partitions))
    assert report["rows_per_partition"] == [rows // partitions] * partitions
    assert report["errors"] == []
    # One reused Python worker per (single-core) executor JVM ran all its tasks.
    assert len(report["pids"]) == 2
    # Each executor fetched the file into its own directory; both workers still
    # hold the loaded model after the job.
    assert len(r["probe_dirs"]) == 2 and r["probe_all_exist"]
    assert r["probe_pids"] == r["probe_pids_cached"] == report["pids"]
    # Bad rows set aside on two executors: every id once, in the output or the
    # quarantine files, good rows equal to eager PyTorch; on_error="null" nulls them.
    bad = r["bad_rows"]
    assert bad["quarantined"] == bad["expected_bad"] and len(bad["expected_bad"]) > 40
    assert bad["scored"] + len(bad["quarantined"]) == rows
    assert bad["count"] == bad["distinct"] == rows and bad["missing"] == bad["extra"] == 0
    assert bad["max_abs_diff"] < 1e-3
    assert bad["report_rows"] == rows and bad["report_bad_rows"] == len(bad["expected_bad"])
    assert bad["report_files"] == partitions and len(bad["hosts_pids"]) == 2
    assert bad["null_ids"] == bad["expected_bad"]
    # A file:// URI: downloaded once per host into $TORCHSPARK_CACHE, same predictions.
    assert r["uri_rows"] == rows and r["uri_max_abs_diff"] == 0.0
    # Drift statistics merged from both executors' tasks, against numpy.
    drift = r["drift"]
    assert len(drift["pids"]) == 2
    count, *moments, q90 = drift["output"]
    numpy_count, *numpy_moments, numpy_q90 = drift["numpy_output"]
    assert count == numpy_count == rows
    assert moments == pytest.approx(numpy_moments, rel=1e-9, abs=1e-12)
    assert abs(q90 - numpy_q90) <= 0.01 * abs(numpy_q90) * (1 + 1e-9)
    assert drift["input"] == pytest.approx(drift["numpy_input"], rel=1e-9)
    assert drift["input_columns"] == ["features"] + [f"features[{i}]" for i in range(8)]
    assert drift["self_psi"] == 0.0 and drift["psi"] > 0.25
    # Its HTML report: the plots embedded, the row count.
    assert r["html"]["images"] >= 5 and r["html"]["rows"]
    assert len(r["cache_files"]) == 1 and r["cache_files"][0].endswith("/cluster_mlp.pt")
    # The executors' per-task log lines: one per partition of the predict job.
    lines = [line for line in r["log_lines"] if r["ref_location"] in line]
    assert len(lines) == partitions, r["log_lines"]
    partition_ids = sorted(int(re.search(r"partition (\d+)", line)[1]) for line in lines)
    assert partition_ids == list(range(partitions))
    for line in lines:
        # batch_size defaults to Spark's Arrow batch size (maxRecordsPerBatch, 10000)
        assert "(TorchScript) on cpu, batch_size 10000" in line
        assert f": {rows // partitions} rows in" in line


def test_docstring_examples_run(spark):
    import doctest
    import importlib
    import pkgutil

    import torchspark.spark as package

    finder = doctest.DocTestFinder()
    tests = finder.find(package, package.__name__)
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        tests += finder.find(importlib.import_module(name), name)
    # The package's example first: it defines the spark, path and df the others use.
    tests.sort(key=lambda t: t.name != package.__name__)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    shared: dict = {}
    for test in tests:
        if test.examples:
            test.globs = shared
            runner.run(test, clear_globs=False)
    failures, tried = runner.summarize(verbose=False)
    assert tried >= 15 and failures == 0


def test_a_second_predict_reuses_the_probe(df, source, models, monkeypatch):
    first = torchspark.predict(df, models.path("mlp"), inputs="features", keep=["id"])

    def no_probe(*args, **kwargs):
        raise AssertionError("the model was loaded on the driver again")

    monkeypatch.setattr(torchspark._C, "load_model", no_probe)
    again = torchspark.predict(df, models.path("mlp"), inputs="features", keep=["id"])
    assert again.schema == first.schema
    table = collect(again, ids(source))
    expected = eager(models.module("mlp"), floats(source, "features"))
    torch.testing.assert_close(floats(table, "prediction"), expected)


@pytest.mark.parametrize("nulls", [False, True])
def test_packed_gather_matches_the_gather(df, source, models, nulls):
    data = with_nulls(df, "c0", "pmod(id, 5) = 0") if nulls else df
    spec = Input(["c0", "c1", "c2"], pack=True, nulls="fill" if nulls else "error", fill=-2)
    scored = torchspark.predict(data, models.path("features3"), inputs=spec)
    # The default keeps the DataFrame's columns, not the packed one.
    assert scored.columns == [*df.columns, "prediction"]
    table = collect(scored, ids(source))
    x = torch.stack([floats(source, c) for c in ("c0", "c1", "c2")], dim=1)
    if nulls:
        x[torch.tensor(ids(source)) % 5 == 0, 0] = -2.0
    torch.testing.assert_close(floats(table, "prediction"), eager(models.module("features3"), x))


def test_pack_is_for_gathered_columns_only():
    with pytest.raises(ValueError, match="pack"):
        Input("features", pack=True)


def test_packed_fill_values_of_every_kind(spark):
    from torchspark.spark.packing import sql_literal as _sql_literal

    cases = [
        (_sql_literal(-2, "float"), -2.0),
        (_sql_literal(float("nan"), "double"), float("nan")),
        (_sql_literal(float("-inf"), "float"), float("-inf")),
        (_sql_literal(-3, "bigint"), -3),
        (_sql_literal(True, "boolean"), True),
    ]
    row = spark.sql("SELECT " + ", ".join(f"{sql} AS v{i}" for i, (sql, _) in enumerate(cases)))
    values = row.collect()[0]
    for i, (_, want) in enumerate(cases):
        got = values[f"v{i}"]
        assert (got != got and want != want) or got == want, (cases[i], got)
