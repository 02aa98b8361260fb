"""ONNX models (export(format="onnx"), the native ONNX Runtime backend) and
int8 exports, against the eager modules they were made from: tabular, tuple
and dict outputs, text and image inputs, token budgets, Spark's predict and
torch_udf, and the errors a user meets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from models import MLP, DictOut, TupleOut, TwoInput
from test_image import IMAGENET_MEAN, IMAGENET_STD, TinyConv, jpeg, pil_reference, pixels
from test_image import pillow_decode as decode
from test_text import Encoder, reference, sentences, train_tokenizer

import torchspark
from torchspark import _C, Engine, ExportError, Input

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# ONNX Runtime's kernels (fused, reordered reductions) against eager float32:
# the tolerance export's own check holds float32 exports to.
CLOSE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Exports each (module, examples, options) once: exported(name, ...)."""
    root = tmp_path_factory.mktemp("onnx")
    made: dict[str, str] = {}

    def export(name: str, module, examples, **options) -> str:
        if name not in made:
            suffix = ".pt" if options.get("format") == "torchscript" else ".onnx"
            options.setdefault("format", "onnx")
            made[name] = torchspark.export(
                module, examples, str(root / f"{name}{suffix}"), **options
            )
        return made[name]

    return export


def test_tabular_tuple_and_dict_outputs_match_eager(exported):
    x = torch.randn(4, 8)
    mlp, tup, two, dic = MLP().eval(), TupleOut().eval(), TwoInput().eval(), DictOut().eval()
    assert _C.detect_format(exported("mlp", mlp, (x,))) == "ONNX"
    with Engine(exported("mlp", mlp, (x,)), batch_size=16) as engine:
        for rows in (1, 7, 50):  # one call, one call, several calls
            batch = torch.randn(rows, 8)
            with torch.no_grad():
                torch.testing.assert_close(engine.run(batch), mlp(batch), **CLOSE)
    batch = torch.randn(9, 8)
    with Engine(exported("tuple", tup, (x,))) as engine:
        got = engine.run(batch)
    with torch.no_grad():
        want = tup(batch)
    assert isinstance(got, tuple) and len(got) == 3 and got[2].dtype == torch.int64
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **CLOSE)
    y = torch.randn(9, 3)
    with Engine(exported("two", two, (x, torch.randn(4, 3)))) as engine:
        assert engine.model.input_names == ["x", "y"]
        with torch.no_grad():
            torch.testing.assert_close(engine.run({"y": y, "x": batch}), two(batch, y), **CLOSE)
    with Engine(exported("dict", dic, (x, x + 1))) as engine:
        got = engine.run((batch, batch * 2))
    with torch.no_grad():
        want = dic(batch, batch * 2)
    assert list(got) == ["sum", "score"]  # the module's keys, in its order
    for key in want:
        torch.testing.assert_close(got[key], want[key], **CLOSE)


def test_detected_by_content_whatever_the_name(exported, tmp_path):
    renamed = str(tmp_path / "model.bin")
    shutil.copyfile(exported("mlp", MLP().eval(), (torch.randn(4, 8),)), renamed)
    batch = torch.randn(5, 8)
    with Engine(renamed) as engine:
        assert engine.model.format == "ONNX"
        with torch.no_grad():
            torch.testing.assert_close(engine.run(batch), MLP().eval()(batch), **CLOSE)


def test_text_input_and_token_budgets_match_eager_row_by_row(exported, tokenizer_path, rng):
    module = Encoder().eval()
    ids = torch.randint(4, 100, (3, 10))
    path = exported("encoder", module, (ids, torch.ones_like(ids), torch.zeros_like(ids)))
    texts = [*sentences(rng, 300), "", "fox"]
    batch = pa.record_batch({"text": pa.array(texts)})
    expected = reference(tokenizer_path, texts, 24, module)
    spec = Input("text", kind="text", tokenizer=tokenizer_path, max_len=24)
    for options in ({"batch_size": 64}, {"max_tokens": 300}, {"max_tokens": "auto"}):
        with Engine(path, inputs=spec, **options) as engine:
            torch.testing.assert_close(engine.run(batch), expected, **CLOSE)


def test_image_input_matches_eager(exported, rng):
    module = TinyConv().eval()
    path = exported("conv", module, (torch.rand(2, 3, 24, 24),))
    data = [jpeg(pixels(rng, 30 + 9 * i, 50)) for i in range(9)]
    spec = Input("image", kind="image", size=24, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with Engine(path, inputs=spec, batch_size=4) as engine:
        got = engine.run(pa.record_batch({"image": pa.array(data, pa.binary())}))
    pixels_in = torch.stack(
        [pil_reference(decode(d), 24, None, IMAGENET_MEAN, IMAGENET_STD) for d in data]
    )
    with torch.no_grad():
        torch.testing.assert_close(got, module(pixels_in), **CLOSE)


def test_inputs_are_widened_or_refused_by_name(exported):
    class Ids(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids * 3

    path = exported("ids", Ids(), (torch.arange(8).view(4, 2),))
    small = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    with Engine(path) as engine:
        assert torch.equal(engine.run(small), small.long() * 3)  # int32 -> int64: no value lost
    with (
        Engine(path) as engine,
        pytest.raises(torchspark.ModelError, match=r"failed: input 'ids' expects Long, got Float"),
    ):
        engine.run(torch.ones(2, 2))
    with (
        Engine(path) as engine,
        pytest.raises(
            torchspark.ModelError, match=r"input 'ids' expects rank 2 \[\?, \?\], got .*\[2\]"
        ),
    ):
        engine.run(torch.tensor([1, 2]))
    x = torch.randn(4, 8)
    with (
        Engine(exported("mlp", MLP().eval(), (x,))) as engine,
        pytest.raises(
            torchspark.ModelError, match=r"input 'x' expects shape \[\?, 8\], got .*dim 1"
        ),
    ):
        engine.run(torch.randn(3, 5))


def test_onnx_runtime_errors_name_the_model(exported, tmp_path):
    class Gather(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(10, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.table(ids)

    path = exported("gather", Gather().eval(), (torch.arange(8).view(4, 2),))
    # An id past the table: eager raises IndexError, ORT refuses the Gather.
    with (
        Engine(path) as engine,
        pytest.raises(
            torchspark.ModelError,
            match=r"\(ONNX\): batch 0 .*failed: ONNX Runtime \(run\): .*indices",
        ),
    ):
        engine.run(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match=r"\(ONNX\): precision 'bf16' is applied at run time"):
        Engine(path, precision="bf16")
    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"\x08\x08\x12\x07pytorch" + b"\x00\xff" * 40)
    with pytest.raises(
        ValueError,
        match=r"\(ONNX\): failed to load: ONNX Runtime \(version 1\.\d+\.\d+, loading the file\)",
    ):
        Engine(str(garbage))


def test_without_onnx_runtime_the_error_says_how_to_install(exported):
    path = exported("mlp", MLP().eval(), (torch.randn(4, 8),))
    code = (
        "import torchspark\n"
        "try:\n"
        f"    torchspark.Engine({path!r})\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "TORCHSPARK_ONNXRUNTIME_LIBRARY": "/nonexistent/libonnxruntime.so.1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "ONNX Runtime is not available: cannot load '/nonexistent/libonnxruntime.so.1'" in (
        out.stdout
    ), out.stderr
    assert "pip install 'torchspark[onnx]'" in out.stdout


class Wide(torch.nn.Module):
    """Big enough Linear layers for int8 to matter; an embedding-like output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_int8_is_smaller_and_close_to_the_float_module(exported, format):
    module = Wide().eval()
    x = torch.randn(16, 64)
    floats = exported(f"wide-{format}", module, (x,), format=format)
    int8 = exported(f"wide-{format}-int8", module, (x,), format=format, quantize="int8")
    assert os.path.getsize(int8) < 0.45 * os.path.getsize(floats)
    batch = torch.randn(40, 64)
    with Engine(int8) as engine:
        got = engine.run(batch)
    with torch.no_grad():
        want = module(batch)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=1)
    assert cosine.min() > 0.99
    assert not torch.allclose(got, want, **CLOSE)  # it is quantized: values moved


def test_int8_beyond_the_stated_limits_is_refused_with_figures(tmp_path):
    module = Wide().eval()
    x = torch.randn(16, 64)
    with pytest.raises(ExportError, match=r"min_cosine 1, tolerance 1e-06\): max \|difference\|"):
        torchspark.export(
            module,
            (x,),
            str(tmp_path / "m.onnx"),
            format="onnx",
            quantize="int8",
            min_cosine=1.0,
            tolerance=1e-6,
        )
    with pytest.raises(ValueError, match=r"quantize='int8' is for format='torchscript' or 'onnx'"):
        torchspark.export(module, (x,), str(tmp_path / "m.pt2"), format="aoti", quantize="int8")
    with pytest.raises(ValueError, match=r"quantize: expected 'int8' or None"):
        torchspark.export(module, (x,), str(tmp_path / "m.pt"), quantize="int4")


def test_static_shapes_and_reduced_precision(exported, tmp_path):
    module = Encoder().eval()
    ids = torch.randint(4, 100, (3, 10))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    path = exported("encoder-static", module, example, dynamic_batch=False)
    with Engine(path) as engine, torch.no_grad():
        torch.testing.assert_close(engine.run(example), module(*example), **CLOSE)
    mlp, x = MLP().eval(), torch.randn(6, 8)
    half = exported("mlp-fp16", mlp, (x,), precision="fp16")  # float32 in and out
    with Engine(half) as engine, torch.no_grad():
        torch.testing.assert_close(engine.run(x), mlp(x), rtol=1e-2, atol=1e-2)
        assert not torch.equal(engine.run(x), mlp(x))  # computed in fp16
    with pytest.raises(ValueError, match=r"format='onnx' with precision='bf16': .* no bf16 Gemm"):
        torchspark.export(mlp, (x,), str(tmp_path / "m.onnx"), format="onnx", precision="bf16")


@pytest.mark.spark
def test_predict_and_torch_udf_score_with_onnx(spark, exported, tokenizer_path, rng):
    module = Encoder().eval()
    ids = torch.randint(4, 100, (3, 10))
    path = exported("encoder", module, (ids, torch.ones_like(ids), torch.zeros_like(ids)))
    texts = sentences(rng, 400)
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string")
    scored = torchspark.predict(
        df.repartition(3),
        path,
        inputs=Input("text", kind="text", tokenizer=tokenizer_path, max_len=32),
        output="embedding",
        keep=["id"],
        max_tokens=512,
    )
    rows = sorted(scored.collect(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(texts)))
    expected = reference(tokenizer_path, texts, 32, module)
    torch.testing.assert_close(torch.tensor([r["embedding"] for r in rows]), expected, **CLOSE)

    mlp = MLP().eval()
    features = rng.standard_normal((300, 8)).astype(np.float32)
    tabular = spark.createDataFrame(
        [(i, *map(float, f)) for i, f in enumerate(features)],
        "id long, " + ", ".join(f"f{k} float" for k in range(8)),
    )
    udf = torchspark.torch_udf(
        exported("mlp", mlp, (torch.randn(4, 8),)), return_type="array<float>", inputs="gather"
    )
    out = tabular.select("id", udf(*[f"f{k}" for k in range(8)]).alias("y")).collect()
    got = torch.tensor([r["y"] for r in sorted(out, key=lambda r: r["id"])])
    with torch.no_grad():
        torch.testing.assert_close(got, mlp(torch.from_numpy(features)), **CLOSE)
