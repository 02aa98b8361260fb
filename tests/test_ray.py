"""torchspark.ray: the engine on Ray Data's ``map_batches``, on a local Ray
cluster (2 CPUs, started once for the module, shut down at its end).

References are independent of torchspark: the eager module run by torch on
the columns (numpy), ``tokenizers`` called row by row, Pillow decoding and
resizing each image. Every row is checked by its id, exactly once.
"""

from __future__ import annotations

import doctest
import io
import os
import re
import signal
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import ModelFiles
from test_text import tokenizer_path as tokenizer_path  # a fixture of this module too

import torchspark
from torchspark import Input

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from torchspark.ray import Predictor, last_report, put  # noqa: E402

ROWS = 1000
BLOCKS = 4  # Ray Data blocks of the test datasets: several map_batches calls per actor
TEST_TIMEOUT_S = 240  # per test, on 2 cores shared with builds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray cluster of 2 CPUs; its workers cache models under a
    temporary TORCHSPARK_CACHE (they inherit this environment)."""
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("TORCHSPARK_CACHE")
    os.environ["TORCHSPARK_CACHE"] = str(tmp_path_factory.mktemp("ray_cache"))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        namespace="torchspark-tests",
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("TORCHSPARK_CACHE", None)
        else:
            os.environ["TORCHSPARK_CACHE"] = saved


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Each test ends within TEST_TIMEOUT_S (SIGALRM raises in the driver's wait)."""

    def expire(signum, frame):
        raise TimeoutError(f"test took more than {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return ModelFiles(tmp_path_factory.mktemp("ray_models"))


def dataset(table: pa.Table, blocks: int = BLOCKS):
    """``table`` as a Ray dataset of ``blocks`` blocks."""
    step = -(-table.num_rows // blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])


def score(ds, actors: int = 2, **kwargs) -> pa.Table:
    """``ds`` through Predictor on ``actors`` actors, as one Table sorted by id."""
    scored = ds.map_batches(
        Predictor,
        fn_constructor_kwargs=kwargs,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
    )
    table = pa.concat_tables(ray.get(scored.to_arrow_refs()))
    return table.sort_by("id")


def exactly_once(table: pa.Table, rows: int = ROWS) -> None:
    assert table.column("id").to_pylist() == list(range(rows))


def floats(table: pa.Table, column: str) -> torch.Tensor:
    return torch.tensor(table.column(column).to_pylist(), dtype=torch.float32)


def eager(module: torch.nn.Module, *args: np.ndarray):
    with torch.inference_mode():
        return module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args))


@pytest.fixture(scope="module")
def tabular() -> pa.Table:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((ROWS, 8), dtype=np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(ROWS), pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(features.ravel(), 8).cast(
                pa.list_(pa.float32())
            ),
            "a": rng.standard_normal(ROWS),  # float64
            "b": rng.integers(-5, 5, ROWS).astype(np.int32),
            "c": rng.standard_normal(ROWS).astype(np.float32),
        }
    )


# ---------------------------------------------------------------------------
# On a Ray cluster


@pytest.mark.slow
def test_array_column_by_path_matches_eager_with_every_row_once(cluster, models, tabular):
    out = score(dataset(tabular), model=models.path("mlp"), inputs="features", keep=["id"])
    exactly_once(out)
    assert out.column_names == ["id", "prediction"]
    assert out.schema.field("prediction").type == pa.list_(pa.float32())  # array<float>
    features = np.array(tabular.column("features").to_pylist(), dtype=np.float32)
    torch.testing.assert_close(floats(out, "prediction"), eager(models.module("mlp"), features))

    report = last_report()
    assert report is not None and not report.failed
    assert report.rows == ROWS and report.tasks >= BLOCKS
    assert report.devices == ["cpu"] and report.intra_op_threads == [1]  # num_cpus=1 per actor
    assert report.models == ["mlp.pt (TorchScript)"]
    assert len({r["actor"] for r in report.task_records}) == 2


@pytest.mark.slow
def test_gathered_columns_from_the_object_store_keep_every_column(cluster, models, tabular):
    shipped = put(models.path("features3"))
    out = score(dataset(tabular), model=shipped, inputs=["a", "b", "c"], output="score")
    exactly_once(out)
    assert out.column_names == [*tabular.column_names, "score"]
    assert out.select(tabular.column_names).equals(tabular.sort_by("id"))
    x = np.stack([tabular.column(c).to_numpy().astype(np.float32) for c in "abc"], 1)
    torch.testing.assert_close(floats(out, "score"), eager(models.module("features3"), x))
    # Written once into the workers' model cache, under its digest.
    cached = os.path.join(os.environ["TORCHSPARK_CACHE"], "objects", shipped.sha256)
    assert os.listdir(cached) == ["features3.pt"]


@pytest.mark.slow
def test_threads_follow_the_actors_num_cpus(cluster, models, tabular):
    scored = dataset(tabular).map_batches(
        Predictor,
        fn_constructor_kwargs={"model": models.path("mlp"), "inputs": "features"},
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=2,
    )
    assert scored.count() == ROWS
    assert last_report().intra_op_threads == [2]


@pytest.mark.slow
def test_padded_token_lists_and_several_outputs(cluster, models):
    rng = np.random.default_rng(1)
    tokens = [list(rng.integers(1, 50, rng.integers(0, 30))) for _ in range(ROWS)]
    table = pa.table({"id": np.arange(ROWS), "tokens": pa.array(tokens, pa.list_(pa.int64()))})
    out = score(dataset(table), model=models.path("bag"), inputs=Input("tokens", kind="pad"))
    exactly_once(out)
    assert out.column_names == ["id", "tokens", "prediction_0", "prediction_1", "prediction_2"]
    torch.testing.assert_close(
        floats(out, "prediction_0"), models.module("bag").reference(tokens), atol=1e-5, rtol=1e-5
    )
    assert out.schema.field("prediction_1").type == pa.int64()  # bigint, as in Spark


@pytest.mark.slow
def test_text_with_a_shipped_tokenizer_matches_the_tokenizer_and_module(
    cluster, tmp_path, tokenizer_path
):
    from test_text import Encoder, reference, sentences

    rng = np.random.default_rng(2)
    texts = sentences(rng, 400)
    table = pa.table({"id": np.arange(len(texts)), "text": texts})
    encoder = str(tmp_path / "encoder.pt")
    torch.jit.script(Encoder().eval()).save(encoder)
    spec = Input("text", kind="text", tokenizer=put(tokenizer_path), max_len=32)
    out = score(dataset(table), model=put(encoder), inputs=spec, keep=["id"], output="embedding")
    exactly_once(out, len(texts))
    expected = reference(tokenizer_path, texts, 32, Encoder().eval())
    torch.testing.assert_close(floats(out, "embedding"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_image_bytes_match_pillow_and_the_module(cluster, tmp_path):
    from test_image import Image, jpeg, pixels

    rng = np.random.default_rng(3)
    shapes = [(int(rng.integers(20, 80)), int(rng.integers(20, 80))) for _ in range(24)]
    images = [jpeg(pixels(rng, h, w)) for h, w in shapes]
    table = pa.table({"id": np.arange(len(images)), "image": pa.array(images, pa.binary())})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    model = torch.nn.Sequential(model, torch.nn.Flatten()).eval()
    path = torchspark.export(model, torch.randn(2, 3, 16, 16), str(tmp_path / "conv.pt"))
    spec = Input("image", kind="image", size=16, resize="stretch")
    out = score(dataset(table), model=path, inputs=spec, keep=["id"])
    exactly_once(out, len(images))
    decoded = [
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((16, 16), Image.BILINEAR))
        for b in images
    ]
    x = np.stack(decoded).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(floats(out, "prediction"), eager(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_null_row_fails_naming_column_row_and_id(cluster, models, tabular):
    features = tabular.column("features").to_pylist()
    features[ROWS - 7] = None
    bad = tabular.set_column(1, "features", pa.array(features, pa.list_(pa.float32())))
    with pytest.raises(Exception) as info:
        score(dataset(bad), model=models.path("mlp"), inputs="features", keep=["id"])
    text = str(info.value)
    assert "NullValueError" in text and "column 'features': 1 null value" in text
    # The last block holds ids 750..999 in one Arrow batch; id 993 is its row 243.
    assert re.search(
        rf"\[at Ray actor \w+ call \d+, Arrow batch 0 \(250 rows\), row 243 \(id={ROWS - 7}\)\]",
        text,
    ), text
    report = last_report()
    assert report.failed and "NullValueError: column 'features'" in report.errors[-1]


@pytest.mark.slow
def test_a_model_that_does_not_load_fails_when_the_actor_starts(cluster, tmp_path, tabular):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(Exception, match=r"broken\.pt"):
        score(dataset(tabular), actors=1, model=str(path), inputs="features")


@pytest.mark.slow
def test_docstring_example_runs(cluster):
    import torchspark.ray as module

    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried >= 5 and failures == 0


# ---------------------------------------------------------------------------
# The class on its own (no cluster): what one map_batches call does


def test_a_call_returns_the_types_predict_gives(models, tabular):
    predictor = Predictor(models.path("tuple_out"), inputs="features", keep=["id"])
    out = predictor(tabular.slice(10, 100))
    assert out.column_names == ["id", "prediction_0", "prediction_1", "prediction_2"]
    assert out.column("id").to_pylist() == list(range(10, 110))
    types = [f.type for f in out.schema][1:]
    # Spark's array<float>, float and bigint
    assert types == [pa.list_(pa.float32()), pa.float32(), pa.int64()]
    lin, total, argmax = eager(
        models.module("tuple_out"),
        np.array(tabular.column("features").to_pylist()[10:110], dtype=np.float32),
    )
    torch.testing.assert_close(floats(out, "prediction_0"), lin)
    torch.testing.assert_close(floats(out, "prediction_1"), total)
    assert out.column("prediction_2").to_pylist() == argmax.tolist()


def test_a_call_takes_chunked_tables_and_zero_rows(models, tabular):
    predictor = Predictor(models.path("mlp"), inputs="features", keep=["id"])
    chunked = pa.concat_tables([tabular.slice(0, 5), tabular.slice(5, 7)])
    out = predictor(chunked)
    assert out.column("id").to_pylist() == list(range(12))
    empty = predictor(tabular.slice(0, 0))
    assert empty.num_rows == 0 and empty.column_names == ["id", "prediction"]


def test_wrong_batches_names_and_files_are_refused(models, tabular, tmp_path):
    predictor = Predictor(models.path("mlp"), inputs="features", output="id")
    with pytest.raises(ValueError, match=r"output columns \['id'\] clash"):
        predictor(tabular.slice(0, 4))
    with pytest.raises(TypeError, match="batch_format='pyarrow'"):
        predictor({"features": np.zeros((4, 8), np.float32)})
    with pytest.raises(ValueError, match=r"keep: columns \['nope'\]"):
        Predictor(models.path("mlp"), inputs="features", keep=["nope"])(tabular.slice(0, 4))
    with pytest.raises(TypeError, match="model= expected a path"):
        Predictor(torch.nn.Linear(8, 1), inputs="features")
    with pytest.raises(FileNotFoundError, match=r"put: .*nope\.pt': no such file"):
        put(str(tmp_path / "nope.pt"))
