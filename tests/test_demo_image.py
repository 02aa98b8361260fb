"""The demo's image task (torchspark.demo.image): its JPEGs, ResNet-18 and
reference, at tiny sizes, against independent computations."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark.demo import image as I

Image = pytest.importorskip("PIL.Image")


def test_images_vary_in_size_and_are_fixed_by_the_seed():
    images = I.make_images(12)
    sizes = [Image.open(io.BytesIO(d)).size for d in images]
    assert all(200 <= w <= 800 and 200 <= h <= 800 for w, h in sizes)
    assert len(set(sizes)) > 6  # varied, not one size
    assert all(Image.open(io.BytesIO(d)).format == "JPEG" for d in images)
    assert I.make_images(3) == images[:3]


def test_pillow_preprocess_is_the_image_input():
    # The reference's preprocessing (Pillow) and torchspark's native one agree.
    images = I.make_images(6, seed=3)
    batch = pa.record_batch({"image": pa.array(images, pa.binary())})
    (native,) = torchspark.engine.input_tensors(batch, I._image_input())
    pillow = torch.from_numpy(np.stack([I.pillow_preprocess(d) for d in images]))
    assert native.shape == (6, 3, I.CROP, I.CROP)
    torch.testing.assert_close(native, pillow, rtol=0, atol=1e-5)


def test_resnet18_has_resnet18s_shape_and_exports(tmp_path):
    model = I.build_model()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18
    x = torch.randn(2, 3, 64, 64)
    path = torchspark.export(model, x, str(tmp_path / "r.pt"))
    with torchspark.Engine(path) as engine, torch.no_grad():
        torch.testing.assert_close(engine.run(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.spark
def test_image_task_end_to_end(spark, tmp_path, capsys):
    args = argparse.Namespace(rows=24, workdir=str(tmp_path), no_compare=False)
    result = I.run(spark, args, str(tmp_path))
    out = capsys.readouterr().out
    assert result.ok, out
    assert result.rows == 24 and result.baseline_s is not None
    assert "OK: every image's logits match the eager reference" in out
    model = I.ResNet18()
    model.load_state_dict(torch.load(str(tmp_path / "resnet18.state.pt"), weights_only=True))
    rows, diff = I._check(
        str(tmp_path / "image_predictions.parquet"),
        I.reference_logits(I.make_images(24), model.eval()),
    )
    assert rows == 24 and diff <= I.TOLERANCE
