"""The image task: image classification with a ResNet-18 over JPEGs of varied sizes.

``python -m torchspark.demo --task image`` (part of the default run). Nothing
is downloaded; everything is made here from fixed seeds:

1. JPEGs of 200-800 pixels a side with varied aspect ratios (smooth gradients
   and noise, quality 85-90), written to Parquet as ``id, image`` (binary);
2. a ResNet-18 with random weights, written here in plain PyTorch (torchvision
   cannot load beside the CPU torch on these machines), exported to
   TorchScript with ``torchspark.export`` (checked against the module);
3. ``torchspark.predict`` with an image input (decoded by libjpeg-turbo,
   resized and normalized in the engine's staging threads, no Python, no GIL),
   then Spark's ``predict_batch_udf`` with Pillow decode and resize in its
   predict function, as users write it;
4. every prediction of both checked against an eager reference in this
   process: Pillow decode (libjpeg-turbo too), Pillow's ``BILINEAR`` resize of
   the shorter side to 256, a 224 center crop, ImageNet normalization, the
   eager module.
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Any

import numpy as np
import torch

import torchspark

from ._common import TaskResult, check_vectors, step, stopwatch

__all__ = [
    "CROP",
    "DEFAULT_ROWS",
    "MEAN",
    "RESIZE",
    "STD",
    "TOLERANCE",
    "ResNet18",
    "make_images",
    "pillow_preprocess",
    "predict_fn_factory",
    "reference_logits",
    "run",
]

DEFAULT_ROWS = 1_000
RESIZE, CROP = 256, 224  # shorter side, then center crop (the ImageNet evaluation transform)
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
CLASSES = 1000
PBU_BATCH = 32  # predict_batch_udf's rows per model call
TOLERANCE = 1e-3  # max |difference| from the reference per logit (float32 convolutions)


def make_images(rows: int, seed: int = 0) -> list[bytes]:
    """JPEGs of 200-800 px a side, varied aspect ratios, smooth with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        h, w = (int(v) for v in rng.integers(200, 801, size=2))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.28, size=3)
        base = np.stack(
            [
                127 + 100 * np.sin(x / rng.uniform(20, 90) + y / rng.uniform(30, 120) + p)
                for p in phase
            ],
            -1,
        )
        noise = rng.normal(0, 12, size=base.shape)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=int(rng.integers(85, 91)))
        out.append(buffer.getvalue())
    return out


def write_images(path: str, images: list[bytes], row_group: int = 256) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"id": np.arange(len(images), dtype=np.int64), "image": pa.array(images, pa.binary())}
    )
    pq.write_table(table, path, row_group_size=row_group)


class _Block(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(outputs)
        self.conv2 = torch.nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(outputs)
        self.down = None
        if stride != 1 or inputs != outputs:
            self.down = torch.nn.Sequential(
                torch.nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                torch.nn.BatchNorm2d(outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.down is None else self.down(x)
        return torch.relu(out + shortcut)


class ResNet18(torch.nn.Module):
    """ResNet-18 (He et al. 2016; torchvision's layout): [N, 3, H, W] -> [N, classes] logits."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(3, 2, 1),
        )
        layers = []
        widths = [64, 64, 128, 256, 512]
        for i in range(4):
            stride = 1 if i == 0 else 2
            layers += [
                _Block(widths[i], widths[i + 1], stride),
                _Block(widths[i + 1], widths[i + 1], 1),
            ]
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model(seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    model = ResNet18()
    # Random batch-norm statistics, so that every layer matters in the check.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def pillow_preprocess(data: bytes) -> np.ndarray:
    """What users write with Pillow: decode, RGB, the shorter side to 256
    (BILINEAR), a 224 center crop (torchvision's offsets), normalize: [3, 224, 224]."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    size = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
    image = image.resize(size, Image.BILINEAR)
    left = round((size[0] - CROP) / 2.0)  # torchvision's offsets (half to even)
    top = round((size[1] - CROP) / 2.0)
    pixels = np.asarray(image.crop((left, top, left + CROP, top + CROP)), dtype=np.float32)
    pixels = (pixels / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return pixels.transpose(2, 0, 1)


def reference_logits(images: list[bytes], model: torch.nn.Module, batch: int = 32) -> np.ndarray:
    """Pillow preprocessing and the eager module, in this process."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([pillow_preprocess(d) for d in images[i : i + batch]]))
            out.append(model(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, CLASSES), np.float32)


def predict_fn_factory(state_path: str) -> Any:
    """``make_predict_fn`` for ``predict_batch_udf``: the model loaded once per
    Python worker; the predict function decodes and resizes its batch with
    Pillow, then runs the model."""

    def make_predict_fn():
        model = ResNet18()
        model.load_state_dict(torch.load(state_path, weights_only=True))
        model.eval()

        def predict(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.stack([pillow_preprocess(bytes(d)) for d in images]))
            with torch.inference_mode():
                return model(x).numpy()

        return predict

    return make_predict_fn


def _image_input() -> torchspark.Input:
    return torchspark.Input("image", kind="image", size=CROP, resize=RESIZE, mean=MEAN, std=STD)


def _torchspark_job(df: Any, output: str, model_path: str) -> Any:
    scored = torchspark.predict(df, model_path, inputs=_image_input(), output="logits", keep=["id"])
    scored.write.mode("overwrite").parquet(output)
    return torchspark.last_report()


def _predict_batch_udf_job(df: Any, output: str, state_path: str) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    udf = predict_batch_udf(
        predict_fn_factory(state_path),
        return_type=ArrayType(FloatType()),
        batch_size=PBU_BATCH,
    )
    df.select("id", udf("image").alias("logits")).write.mode("overwrite").parquet(output)


def _check(output_path: str, expected: np.ndarray) -> tuple[int, float]:
    """Rows and the largest |difference| from ``expected``, joined on id."""
    return check_vectors(output_path, "logits", expected)


def run(spark: Any, args: argparse.Namespace, workdir: str) -> TaskResult:
    """The image task on ``spark``: ``args.rows`` JPEGs (default 1,000)."""
    rows = DEFAULT_ROWS if args.rows is None else args.rows
    input_path = os.path.join(workdir, "image_input.parquet")
    state_path = os.path.join(workdir, "resnet18.state.pt")
    model_path = os.path.join(workdir, "resnet18.pt")
    output_path = os.path.join(workdir, "image_predictions.parquet")
    baseline_path = os.path.join(workdir, "image_predictions_predict_batch_udf.parquet")

    with stopwatch() as t:
        images = make_images(rows)
        write_images(input_path, images)
    megabytes = sum(map(len, images)) / 1e6
    step(
        f"[image 1/5] generated {rows:,} JPEGs (200-800 px, {megabytes:.1f} MB) -> "
        f"{input_path} ({t[0]:.1f} s)"
    )

    with stopwatch() as t:
        model = build_model()
        torch.save(model.state_dict(), state_path)
        torchspark.export(model, torch.randn(2, 3, CROP, CROP), model_path)
    step(
        f"[image 2/5] built a ResNet-18 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, random weights), exported to TorchScript {model_path} ({t[0]:.1f} s)"
    )

    step("[image 3/5] warming up the Python workers (a small job for each method)")
    parallelism = spark.sparkContext.defaultParallelism
    df = spark.read.parquet(input_path).repartition(2 * parallelism)
    sample = df.limit(16).repartition(parallelism)
    _torchspark_job(sample, os.path.join(workdir, "image_warmup"), model_path)
    if not args.no_compare:
        _predict_batch_udf_job(sample, os.path.join(workdir, "image_warmup_pbu"), state_path)

    step(f"[image 4/5] torchspark.predict with an image input -> {output_path}")
    with stopwatch() as t:
        report = _torchspark_job(df, output_path, model_path)
    wall = t[0]
    baseline_wall = None
    if not args.no_compare:
        step(f"[image 5/5] the same job with predict_batch_udf (Pillow) -> {baseline_path}")
        with stopwatch() as t:
            _predict_batch_udf_job(df, baseline_path, state_path)
        baseline_wall = t[0]

    with stopwatch() as t:
        expected = reference_logits(images, model)
    reference_s = t[0]
    got_rows, error = _check(output_path, expected)
    print()
    print(f"rows        {got_rows:,}")
    print(f"wall        {wall:.2f} s (the Spark job: read, score, write Parquet; after warm-up)")
    print(f"throughput  {got_rows / wall:,.0f} images/s" if wall > 0 else "throughput  -")
    if report is not None:
        print(
            f"latency     p50 {report.p50_ms:.1f} ms, p90 {report.p90_ms:.1f} ms, "
            f"p99 {report.p99_ms:.1f} ms per Arrow batch ({report.arrow_batches} batches, "
            f"{report.model_calls} model calls, {report.tasks} tasks)"
        )
    print(
        f"reference   {reference_s:.2f} s: Pillow decode and resize, the eager module, "
        "in this process"
    )
    base_ok = True
    if baseline_wall is not None:
        base_rows, base_error = _check(baseline_path, expected)
        base_ok = base_rows == rows and base_error <= TOLERANCE
        print(
            f"predict_batch_udf  {baseline_wall:.2f} s "
            f"({base_rows / baseline_wall:,.0f} images/s): "
            f"torchspark is {baseline_wall / wall:.2f}x its speed; its predictions "
            + (f"match the reference (max abs diff {base_error:.1e})" if base_ok else "DIFFER")
            + (f" ({base_error:.3g})" if not base_ok else "")
        )
    ok = got_rows == rows and error <= TOLERANCE and base_ok
    if got_rows == rows and error <= TOLERANCE:
        print(
            "OK: every image's logits match the eager reference (Pillow decode and resize, "
            f"same module) within {TOLERANCE:g} (max abs diff {error:.1e})"
        )
    else:
        print(f"FAILED: {got_rows:,} rows, logits differ from the reference by {error:.3g}")
    print()
    return TaskResult(
        "image",
        rows,
        wall,
        baseline_wall,
        ok,
        gain=(
            "predict_batch_udf decodes and resizes each batch with Pillow in the Python worker, "
            "one image after another and then the model; torchspark decodes (libjpeg-turbo), "
            "resizes and normalizes natively in the engine's staging thread, in parallel and "
            "while the model runs the previous batch; a ResNet-18 on a CPU is bound by its "
            "convolutions, so the gain here is the preprocessing that no longer waits"
        ),
    )
