"""predict, arrow_predictor, torch_udf and last_report under Spark Connect.

A real local Spark Connect server (tests/connect_server.py, its own process:
a process holds one SparkContext, and the test session's classic one may be
up) and a Connect client here, as a user's would be: no SparkContext on this
side. Models and tokenizers reach the executors as artifacts, the tasks'
records come back as files (torchspark.spark.connect). Every output is
compared with eager PyTorch (and the tokenizer, Pillow) on the client.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import FEATURES, MLP
from test_image import Image, TinyConv, pil_reference, pillow_decode
from test_spark import MaskedMean
from test_text import Encoder, reference, sentences, train_tokenizer

import torchspark
from torchspark import Input
from torchspark.distribute import sha256_file, ship
from torchspark.spark import connect

pytestmark = pytest.mark.spark

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 240.0  # the server's JVM on 2 busy cores
BATCH = 100  # spark.sql.execution.arrow.maxRecordsPerBatch in these tests
ROWS = 1000
PARTITIONS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """A Connect session of a local server started for this module; the
    server stops, and this process leaves Connect mode, at the module's end."""
    pytest.importorskip("grpc", reason="pyspark[connect] is not installed")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "TORCHSPARK_LOG_LEVEL": "WARNING"}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    server = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "connect_server.py"), str(port), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: its JVM goes with it
    )
    saved = os.environ.get("SPARK_CONNECT_MODE_ENABLED")
    session = None
    try:
        ready, _, _ = select.select([server.stdout], [], [], START_TIMEOUT)
        line = server.stdout.readline() if ready else b""
        assert line.strip() == b"ready", f"the Connect server did not start: {line!r}"
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        # What SparkSession.builder.remote(...) sets: pyspark's functions and
        # getActiveSession answer for Connect from now on.
        os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
        session = ConnectSession.builder.remote(f"sc://localhost:{port}/;token={token}").create()
        session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH))
        yield session
    finally:
        if session is not None:
            session.stop()
        if saved is None:
            os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
        else:
            os.environ["SPARK_CONNECT_MODE_ENABLED"] = saved
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("connect_models") / "mlp.pt"
    return torchspark.export(MLP().eval(), torch.randn(4, FEATURES), str(path))


@pytest.fixture(scope="module")
def numbers(spark: Any) -> Any:
    """ROWS rows in PARTITIONS partitions: id, x array<float> (FEATURES wide), made by Spark."""
    from pyspark.sql import functions as F

    x = F.array(*[F.sin(F.col("id") * (k + 1)).cast("float") for k in range(FEATURES)])
    return spark.range(0, ROWS, numPartitions=PARTITIONS).select("id", x.alias("x"))


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def eager_mlp(table: pa.Table) -> torch.Tensor:
    x = torch.tensor(table.column("x").to_pylist(), dtype=torch.float32)
    with torch.no_grad():
        return MLP().eval()(x)


def column(table: pa.Table, name: str) -> torch.Tensor:
    return torch.tensor(table.column(name).to_pylist(), dtype=torch.float32)


def test_connect_session_has_no_spark_context(spark):
    assert connect.is_connect(spark)
    with pytest.raises(Exception, match="sparkContext"):
        spark.sparkContext  # noqa: B018 - what fails without torchspark.spark.connect


def test_numbers_predict_both_routes_arrow_predictor_and_torch_udf(spark, numbers, mlp_path):
    source = by_id(numbers.toArrow())
    expected = eager_mlp(source)

    scored = by_id(torchspark.predict(numbers, mlp_path, inputs="x", keep=["id"]).toArrow())
    assert scored.column("id").to_pylist() == list(range(ROWS))
    torch.testing.assert_close(column(scored, "prediction"), expected)

    # The report: one record per task, read back from the tasks' files.
    report = torchspark.last_report()
    from pyspark.sql import functions as F

    sizes = [r["count"] for r in numbers.groupBy(F.spark_partition_id()).count().collect()]
    assert report.rows == ROWS and report.tasks == PARTITIONS == len(sizes)
    assert report.arrow_batches == sum(math.ceil(n / BATCH) for n in sizes)
    assert report.batch_sizes == [BATCH] and not report.failed
    assert report.limits == connect.LIMITS and "cannot show" in str(report)
    stats = report.output_stats["prediction"]  # merged over the tasks' records
    assert stats.count == expected.numel()
    assert stats.mean == pytest.approx(float(expected.double().mean()), rel=1e-5)
    directory = connect.records_directory(spark)  # this client's, the server being local
    assert os.stat(directory).st_mode & 0o077 == 0

    # Every column kept: the outputs come as an arrow_udf column.
    kept = by_id(torchspark.predict(numbers, mlp_path, inputs="x").toArrow())
    assert kept.column_names == ["id", "x", "prediction"]
    torch.testing.assert_close(column(kept, "prediction"), expected)

    fn = torchspark.arrow_predictor(numbers, mlp_path, inputs="x", keep=["id"], output="y")
    mapped = by_id(numbers.mapInArrow(fn, fn.schema).toArrow())
    torch.testing.assert_close(column(mapped, "y"), expected)

    score = torchspark.torch_udf(mlp_path, return_type="array<float>")
    udf = by_id(numbers.withColumn("s", score("x")).toArrow())
    torch.testing.assert_close(column(udf, "s"), expected)
    assert torchspark.last_report().rows == ROWS


def test_token_lists_predict_and_torch_udf(spark, tmp_path, rng):
    module = MaskedMean().eval()
    path = str(tmp_path / "tokens.pt")
    torch.jit.script(module).save(path)
    rows = [
        [int(t) for t in rng.integers(1, 50, size=int(n))] for n in rng.integers(0, 30, size=300)
    ]
    table = pa.table({"id": pa.array(range(len(rows)), pa.int64()), "tokens": rows})
    df = spark.createDataFrame(table).repartition(2)
    expected = module.reference(rows)

    spec = Input("tokens", kind="pad")
    scored = by_id(torchspark.predict(df, path, inputs=spec, keep=["id"]).toArrow())
    torch.testing.assert_close(column(scored, "prediction"), expected)
    assert torchspark.last_report().rows == len(rows)

    score = torchspark.torch_udf(path, return_type="float", inputs="pad")
    udf = by_id(df.withColumn("s", score("tokens")).toArrow())
    torch.testing.assert_close(column(udf, "s"), expected)


def test_text_with_a_tokenizer_trained_here(spark, tmp_path, rng):
    tokenizer = train_tokenizer(str(tmp_path / "tokenizer.json"))  # shipped as an artifact
    path = str(tmp_path / "encoder.pt")
    torch.jit.script(Encoder().eval()).save(path)
    texts = sentences(rng, 300)
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string")
    expected = reference(tokenizer, texts, 32, Encoder().eval())

    spec = Input("text", kind="text", tokenizer=tokenizer, max_len=32)
    scored = torchspark.predict(df.repartition(2), path, inputs=spec, output="e", keep=["id"])
    torch.testing.assert_close(column(by_id(scored.toArrow()), "e"), expected)
    report = torchspark.last_report()
    assert report.rows == len(texts) and report.token_budgets

    kept = by_id(torchspark.predict(df, path, inputs=spec, output="e").toArrow())
    assert kept.column("text").to_pylist() == texts
    torch.testing.assert_close(column(kept, "e"), expected)


def test_images(spark, tmp_path, rng):
    module = TinyConv().eval()
    path = torchspark.export(module, torch.rand(2, 3, 16, 16), str(tmp_path / "conv.pt"))
    images = []
    for _ in range(24):
        h, w = (int(v) for v in rng.integers(12, 60, size=2))
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out, "JPEG")
        images.append(out.getvalue())
    table = pa.table({"id": pa.array(range(len(images)), pa.int64()), "content": images})
    df = spark.createDataFrame(table).repartition(2)
    with torch.no_grad():
        pixels = [pil_reference(pillow_decode(b), size=16, resize=20) for b in images]
        expected = module(torch.stack(pixels))

    spec = Input("content", kind="image", size=16, resize=20)
    scored = by_id(torchspark.predict(df, path, inputs=spec, keep=["id"]).toArrow())
    torch.testing.assert_close(column(scored, "prediction"), expected, rtol=1e-4, atol=1e-4)
    kept = by_id(torchspark.predict(df, path, inputs=spec).toArrow())
    torch.testing.assert_close(column(kept, "prediction"), expected, rtol=1e-4, atol=1e-4)


def test_sha256_checked_on_the_client_and_on_the_executor(spark, numbers, tmp_path):
    path = str(tmp_path / "linear.pt")
    torch.manual_seed(5)
    torch.jit.script(torch.nn.Linear(FEATURES, 2).eval()).save(path)
    digest = sha256_file(path)
    with pytest.raises(ValueError, match=f"linear.pt': sha256 is {digest}, expected 0{{64}}"):
        torchspark.predict(numbers, path, inputs="x", sha256="0" * 64)

    # The artifact replaced on the executors' side, before any task loads it.
    name = ship(path, connect.files(spark), digest).location

    def replace(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles

        with open(SparkFiles.get(name), "wb") as f:
            f.write(b"swapped")
        yield from batches

    spark.range(1, numPartitions=1).mapInArrow(replace, "id long").collect()
    one_task = numbers.limit(8).repartition(1)  # its 4 attempts fail alike
    scored = torchspark.predict(one_task, path, inputs="x", keep=["id"], sha256=digest)
    with pytest.raises(Exception, match=f"linear.pt': sha256 is [0-9a-f]{{64}}, expected {digest}"):
        scored.collect()
    report = torchspark.last_report()
    # The task that could not load the model still reports, with its error.
    assert report.failed and report.rows == 0 and report.tasks == 1
    assert f"expected {digest}" in report.errors[0]


def test_a_retried_task_counts_once(spark, numbers, mlp_path):
    from pyspark import TaskContext

    fn = torchspark.arrow_predictor(numbers, mlp_path, inputs="x", keep=["id"])

    def first_attempt_fails(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        task = TaskContext.get()
        scored = fn(batches)
        if task.partitionId() == 0 and task.attemptNumber() == 0:
            yield next(scored)  # one Arrow batch out, then the attempt fails
            scored.close()
            raise RuntimeError("injected failure of the first attempt")
        yield from scored

    out = by_id(numbers.mapInArrow(first_attempt_fails, fn.schema).toArrow())
    assert out.column("id").to_pylist() == list(range(ROWS))
    torch.testing.assert_close(column(out, "prediction"), eager_mlp(by_id(numbers.toArrow())))
    report = torchspark.last_report()
    assert report.rows == ROWS and report.tasks == PARTITIONS and not report.failed
    attempts = {r["partition"]: r["attempt"] for r in report.task_records}
    assert attempts == {0: 1, 1: 0, 2: 0}
