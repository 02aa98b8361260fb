"""End-to-end image classification over Spark: torchspark's image input against what users write.

Data: ``--images`` JPEGs (default 5,000; ``--small``: 48) of 200-800 px a side
(aspect ratios 1:4 to 4:1, quality 85-90, generated here with a seed:
``_images.make_jpegs``), written to one Parquet file ``id long, image
binary`` (uncompressed: JPEG bytes do not compress; row groups of 1/16 of the
rows). Every method reads that file on every run, so Parquet reading is in
every figure alike (Daft cannot share Spark's cache).

Preprocessing everywhere: decode, RGB, shorter side to 256 (antialiased
bilinear, Pillow's ``BILINEAR``), center crop 224, ``(x / 255 - mean) / std``
(ImageNet's), into ``[N, 3, 224, 224]`` float32 batches of ``--batch-size``
rows (default 64) for the model.

Models (random weights, built here, no download; BatchNorm statistics
re-estimated on random inputs so activations have realistic scale and the
1,000 logits differ from image to image):

* ``resnet18``: ResNet-18 written below in plain torch (torchvision's
  architecture: BasicBlocks [2, 2, 2, 2], widths 64-512, 1,000 classes;
  ~1.8 GFLOPs per image: model-bound on a CPU).
* ``mobilenet``: transformers' ``MobileNetV2ForImageClassification`` with
  ``depth_multiplier=0.35`` (~60 MFLOPs per image, about MobileNetV3-small's
  56, which transformers does not have): preprocessing-bound, as a GPU job is.

Each is exported with ``torchspark.export`` (TorchScript, verified against the
module); the other methods load the eager module from a state dict.

Methods (same Parquet file, same SparkSession ``local[2]``, each producing
``id long, prediction array<float>`` of the 1,000 logits):

* ``torchspark``: ``torchspark.predict(df, model.pt, inputs=Input("image",
  kind="image", size=224, resize=256, mean=..., std=...), keep=["id"])``:
  decoded natively (libjpeg-turbo) in the engine's staging thread while the
  model runs the previous batch. Its driver probe is inside each timed run.
* ``torchspark-onnx``: the same with the model exported to ONNX
  (``torchspark.export(..., format="onnx")``), run by ONNX Runtime.
* ``pbu``: ``pyspark.ml.functions.predict_batch_udf`` over the binary column,
  the predict function decoding with Pillow (``Image.open``, ``convert``,
  ``resize``, ``crop``, numpy) and calling the model.
* ``pandas``: ``mapInPandas`` with the fastest Python decoder a user would
  pick, ``simplejpeg`` (libjpeg-turbo), then the same Pillow resize; the model
  loaded once per Python worker (a process-wide cache).
* ``daft``: Daft on the same Parquet file: ``daft.read_parquet``, Daft's own
  native ``daft.functions.decode_image(mode="RGB")``, then a class UDF
  (``@daft.cls`` + ``@daft.method.batch``: model loaded once per instance,
  ``--daft-instances`` 2 of 1 torch thread, ``--batch-size`` rows per call)
  doing the Pillow resize + crop + normalization and the model. Daft's resize
  only stretches to one fixed size, so the aspect-preserving resize is in the
  UDF. Skipped with the reason printed when Daft cannot be imported or run.
* ``local``: outside Spark, the compute bound: one process reads the file
  with pyarrow, decodes + resizes each batch with Pillow on a thread pool of
  ``nproc`` threads (Pillow releases the GIL while decoding and resizing),
  then runs the eager model with ``nproc`` torch threads.

Fairness: every Spark method runs in the same session with 2 task slots and 1
torch thread per Python worker (``OMP_NUM_THREADS=1`` for workers;
torchspark's tasks take theirs from ``spark.task.cpus``); the file is split
into ``--partitions`` (default 4) input partitions of equal size; each run
ends in ``write.format("noop")`` (Daft: ``collect()``, ``local``: the logits
in memory). Every method first runs once untimed on the check's ids (below),
which also warms it up (Python workers start, modules import, per-worker
models load), then ``--repeats`` timed runs over every row, interleaved round
by round; the table gives the median and minimum wall time, rows/s at the
median, and torchspark's speedup over each method.

Checked before timing: each method scores a sample of ids (all rows with
``--small``, else 64), compared with the eager reference made in this process
(Pillow decode + resize, eager model). Tolerance: per row, the largest logit
error over the row's largest |logit|, at most 1e-3 (torchspark reproduces
Pillow's resize exactly and simplejpeg decodes as Pillow's libjpeg-turbo
does, so only float summation order differs; measured 0 to ~4e-6). Daft's
JPEG decoder (Rust) is not libjpeg-turbo: its pixels differ from Pillow's by
up to 4 levels (mean ~0.1), which the random-weight models amplify to ~1e-2
(ResNet-18) and ~1e-1 (MobileNet) of the largest logit. So Daft's decoded
pixels are checked against Pillow's (at most 6 levels, mean at most 0.25) and
its scores against the eager model on its own pixels (1e-3); its distance to
the Pillow reference is printed. The script stops unless neighbouring
images' logits differ by at least 10x the tolerance (a check that could not
tell images apart proves nothing).

Estimated time on 2 quiet cores: 5,000 images, 3 repeats, every method:
~30 min for ResNet-18 (~40 images/s for every method: 15 runs of ~2 min) and
~10 min for MobileNet; ``--small`` ~1 min.

Run from the repository root (``. .venv/bin/activate``):
``python benchmarks/image_bench.py`` (both models, every method, 5,000 images,
3 repeats), ``--small`` (48 images, 1 repeat: a smoke run), e.g. ``--models
mobilenet --methods torchspark,pandas,daft --repeats 5``; ``--wait-load 1.0``
waits for a quiet machine first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _bench
import _images
import spark_bench
from _images import IMAGENET_MEAN, IMAGENET_STD, RESIZE, SIZE

import torchspark

SEED = 0
METHODS = ["torchspark", "torchspark-onnx", "pbu", "pandas", "daft", "local"]
OUT_SCHEMA = "id long, prediction array<float>"
TOL = 1e-3  # the worst row's max |logit error| / max |logit|: float summation order only
# Daft's JPEG decoder (Rust) is not libjpeg-turbo: measured here, its pixels
# differ from Pillow's by at most 4 levels (mean ~0.1), which the random-weight
# models amplify to ~12% of the largest logit. So its pixels are checked
# against Pillow's decode, and its scores against the eager model on its pixels.
DAFT_MAX_LEVELS, DAFT_MEAN_LEVELS = 6, 0.25


# --------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 architecture (no torchvision: its wheels are CUDA builds)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)
        )


class MobileNet(nn.Module):
    """transformers' MobileNetV2 (depth multiplier 0.35, 1,000 classes), logits out."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, logging

        logging.set_verbosity_error()  # a note about the config's loss type, per worker

        config = MobileNetV2Config(
            depth_multiplier=0.35, image_size=SIZE, num_labels=1000, tf_padding=False
        )
        self.net = MobileNetV2ForImageClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x, return_dict=False)[0]


MODELS: dict[str, Callable[[], nn.Module]] = {"resnet18": ResNet18, "mobilenet": MobileNet}


def build_model(name: str) -> nn.Module:
    """Seeded weights, BatchNorm statistics estimated on random batches (so that,
    in eval mode, every layer's activations are normalized as in a trained net)."""
    torch.manual_seed(SEED)
    model = MODELS[name]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


# ------------------------------------------------- what runs in the Python workers

# Functions of this file are pickled by value (cloudpickle) into Spark's Python
# workers; _images is registered to travel the same way. ``cfg``: model (name),
# state (path of the state dict), threads, batch_size.


def load_model(cfg: dict) -> nn.Module:
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(cfg["threads"])
    model = MODELS[cfg["model"]]()
    model.load_state_dict(torch.load(cfg["state"], weights_only=True))
    return model.eval()


def worker_model(cfg: dict) -> nn.Module:
    """The model, loaded once per Python process (a user keeps it in a module global)."""
    import types

    cache = sys.modules.setdefault("_image_bench_models", types.ModuleType("_image_bench_models"))
    key = (cfg["model"], cfg["state"])
    model = getattr(cache, "models", {}).get(key)
    if model is None:
        model = load_model(cfg)
        cache.models = {key: model}
    torch.set_num_threads(cfg["threads"])
    return model


def score(model: nn.Module, images, decode, batch_size: int) -> np.ndarray:
    """Preprocess + model, ``batch_size`` rows at a time: ``[N, 1000]`` float32."""
    normalize = _images.Normalize()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = _images.preprocess(list(images[start : start + batch_size]), decode, normalize)
            out.append(model(torch.from_numpy(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1000), np.float32)


def make_predict_fn_factory(cfg: dict) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        model = load_model(cfg)

        def predict(images: np.ndarray) -> np.ndarray:
            # predict_batch_udf has already cut its batch_size rows.
            return score(model, images, _images.pillow_rgb, len(images))

        return predict

    return make_predict_fn


def make_pandas_fn(cfg: dict) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def fn(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = worker_model(cfg)
        for pdf in frames:
            if len(pdf) == 0:
                continue
            logits = score(
                model, pdf["image"].to_numpy(), _images.simplejpeg_rgb, cfg["batch_size"]
            )
            yield pd.DataFrame({"id": pdf["id"].to_numpy(), "prediction": list(logits)})

    return fn


# ---------------------------------------------------------------------- the methods


def spark_methods(spark, path: str, cfg: dict, files: dict[str, str], args) -> dict[str, Callable]:
    """name -> (DataFrame of id, image -> DataFrame of id, prediction)."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    def ts(model_path: str):
        def make(df):
            spec = torchspark.Input(
                "image",
                kind="image",
                size=SIZE,
                resize=RESIZE,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            )
            return torchspark.predict(
                df,
                model_path,
                inputs=spec,
                output="prediction",
                keep=["id"],
                batch_size=args.batch_size,
            )

        return make

    def pbu(df):
        # A new UDF per run, as a new job makes: its model cache key is fresh.
        udf = predict_batch_udf(
            make_predict_fn_factory(cfg),
            return_type=ArrayType(FloatType()),
            batch_size=args.batch_size,
        )
        return df.select("id", udf(F.col("image")).alias("prediction"))

    def pandas(df):
        return df.mapInPandas(make_pandas_fn(cfg), OUT_SCHEMA)

    return {
        **{method: ts(model_path) for method, model_path in files.items()},
        "pbu": pbu,
        "pandas": pandas,
    }


def spark_check(make: Callable, spark, path: str, ids: list[int]) -> dict[int, np.ndarray]:
    from pyspark.sql import functions as F

    df = spark.read.parquet(path).filter(F.col("id").isin(ids))
    return {r["id"]: np.asarray(r["prediction"], np.float32) for r in make(df).collect()}


def spark_run(make: Callable, spark, path: str) -> None:
    make(spark.read.parquet(path)).write.format("noop").mode("overwrite").save()


def daft_available() -> str | None:
    """None when Daft imports, else the reason it cannot be used."""
    try:
        import daft  # noqa: F401
    except Exception as e:  # an ImportError, or a native library that fails to load
        return f"import daft failed: {type(e).__name__}: {e}"
    return None


def daft_frame(path: str, cfg: dict, ids: list[int] | None = None):
    """Daft's plan: read_parquet, native decode, a class UDF for resize + model."""
    import daft
    from daft import DataType, col
    from daft.functions import decode_image
    from daft.pickle import cloudpickle

    cloudpickle.register_pickle_by_value(_images)  # for UDF instances in other processes

    @daft.cls(max_concurrency=cfg["daft_instances"])
    class Classify:
        def __init__(self) -> None:
            self.model = load_model(cfg)
            self.normalize = _images.Normalize()

        @daft.method.batch(
            return_dtype=DataType.fixed_size_list(DataType.float32(), 1000),
            batch_size=cfg["batch_size"],
        )
        def __call__(self, images) -> np.ndarray:
            arrays = images.to_pylist()  # numpy [H, W, 3] uint8 per row
            x = _images.preprocess(arrays, _images.array_rgb, self.normalize)
            with torch.inference_mode():
                return self.model(torch.from_numpy(x)).numpy()

    df = daft.read_parquet(path)
    if ids is not None:
        df = df.where(col("id").is_in(ids))
    classify = Classify()
    decoded = decode_image(col("image"), mode="RGB")
    return df.select(col("id"), classify(decoded).alias("prediction"))


def daft_check(path: str, cfg: dict, ids: list[int]) -> dict[int, np.ndarray]:
    out = daft_frame(path, cfg, ids).to_pydict()
    return {
        int(i): np.asarray(p, np.float32) for i, p in zip(out["id"], out["prediction"], strict=True)
    }


def daft_pixels(path: str, ids: list[int]) -> dict[int, np.ndarray]:
    """Daft's decode alone, for ``ids``: ``[H, W, 3]`` uint8 per id."""
    import daft
    from daft import col
    from daft.functions import decode_image

    df = daft.read_parquet(path).where(col("id").is_in(ids))
    out = df.select(col("id"), decode_image(col("image"), mode="RGB").alias("rgb")).to_pydict()
    return {int(i): np.asarray(a) for i, a in zip(out["id"], out["rgb"], strict=True)}


def daft_run(path: str, cfg: dict) -> None:
    daft_frame(path, cfg).collect()


class Local:
    """Outside Spark: pyarrow read, Pillow decode + resize on a thread pool, eager model."""

    def __init__(self, model: nn.Module, path: str, batch_size: int, threads: int) -> None:
        self.model, self.path, self.batch_size, self.threads = model, path, batch_size, threads
        self.pool = ThreadPoolExecutor(threads)
        self.normalize = _images.Normalize()

    def _one(self, item: tuple[bytes, np.ndarray]) -> None:
        data, out = item
        self.normalize(_images.resize_crop(_images.pillow_rgb(data)), out)

    def __call__(self, ids: list[int] | None = None) -> dict[int, np.ndarray] | None:
        table = pq.read_table(self.path)
        if ids is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("id"), pa.array(ids, pa.int64())))
        images = table.column("image").to_pylist()
        torch.set_num_threads(self.threads)
        logits = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                x = np.empty((len(chunk), 3, SIZE, SIZE), np.float32)
                list(self.pool.map(self._one, zip(chunk, x, strict=True)))
                logits.append(self.model(torch.from_numpy(x)).numpy())
        if ids is None:
            return None
        got = np.concatenate(logits)
        return {int(i): got[k] for k, i in enumerate(table.column("id").to_pylist())}


# ----------------------------------------------------------------------- the driver


def decoder_levels(pixels: dict[int, np.ndarray], images: list[bytes]) -> tuple[int, float]:
    """Daft's decoded pixels against Pillow's: (max, mean) |difference| in gray
    levels; stops the benchmark beyond ``DAFT_MAX_LEVELS`` / ``DAFT_MEAN_LEVELS``."""
    worst, total, count = 0, 0.0, 0
    for i, got in pixels.items():
        ref = np.asarray(_images.pillow_rgb(images[i]))
        if got.shape != ref.shape:
            raise SystemExit(f"daft: id {i} decoded to {got.shape}, Pillow gives {ref.shape}")
        diff = np.abs(got.astype(np.int16) - ref)
        worst, total, count = (
            max(worst, int(diff.max())),
            total + float(diff.sum()),
            count + diff.size,
        )
    mean = total / count
    if worst > DAFT_MAX_LEVELS or mean > DAFT_MEAN_LEVELS:
        raise SystemExit(
            f"daft: decoded pixels differ from Pillow's by up to {worst} levels (mean {mean:.2f}); "
            f"expected at most {DAFT_MAX_LEVELS} (mean {DAFT_MEAN_LEVELS})"
        )
    return worst, mean


def compare(
    name: str, got: dict[int, np.ndarray], expected: dict[int, np.ndarray], tol: float
) -> float:
    """The worst row's max |logit error| / max |logit|; stops the benchmark above ``tol``."""
    if sorted(got) != sorted(expected):
        raise SystemExit(f"{name}: scored ids {sorted(got)}, expected {sorted(expected)}")
    worst = 0.0
    for i, ref in expected.items():
        if got[i].shape != ref.shape:
            raise SystemExit(f"{name}: id {i} has {got[i].shape} logits, expected {ref.shape}")
        err = float(np.abs(got[i] - ref).max() / np.abs(ref).max())
        if not err <= tol:
            raise SystemExit(
                f"{name}: id {i} differs from the eager reference by {err:.2e} of its largest "
                f"logit (tolerance {tol:.0e})"
            )
        worst = max(worst, err)
    return worst


def report(rows: int, cases: list[_bench.Case], notes: dict[str, str]) -> None:
    by = {c.name: c for c in cases}
    ts = by.get("torchspark")
    table_rows = []
    for c in cases:
        table_rows.append(
            [
                c.name,
                f"{c.median:.2f}",
                f"{c.min:.2f}",
                f"{rows / c.median:,.1f}",
                _bench.ratio(c.median / ts.median) if ts else "-",
                notes.get(c.name, ""),
            ]
        )
    print(
        _bench.table(
            ["method", "median s", "min s", "rows/s", "torchspark speedup", "max error vs eager"],
            table_rows,
        )
    )


def run_model(spark, name: str, path: str, images: list[bytes], workdir: str, args) -> None:
    model = build_model(name)
    state = os.path.join(workdir, f"{name}_state.pt")
    torch.save(model.state_dict(), state)
    example = torch.from_numpy(_images.preprocess(images[:2]))
    files = {}  # torchspark's methods: the exported model each runs
    for method, fmt, suffix in (
        ("torchspark", "torchscript", "pt"),
        ("torchspark-onnx", "onnx", "onnx"),
    ):
        if method in args.methods:
            files[method] = os.path.join(workdir, f"{name}.{suffix}")
            torchspark.export(model, (example,), files[method], format=fmt)
    cfg = {
        "model": name,
        "state": state,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "daft_instances": args.daft_instances,
    }
    n = len(images)
    ids = (
        list(range(n))
        if args.small
        else sorted(np.random.default_rng(SEED + 1).choice(n, min(n, 64), replace=False).tolist())
    )
    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    logits = score(model, [images[i] for i in ids], _images.pillow_rgb, args.batch_size)
    expected = dict(zip(ids, logits, strict=True))
    ref_s = time.perf_counter() - t0
    # How far apart two images' logits are: a check's tolerance must be far below it.
    spread = min(
        float(np.abs(logits[k] - logits[k + 1]).max() / np.abs(logits[k]).max())
        for k in range(len(ids) - 1)
    )
    if spread < 10 * TOL:
        raise SystemExit(
            f"{name}: neighbouring images' logits differ by only {spread:.2e} of the largest "
            "logit; the checks below would not tell images apart"
        )
    print(
        f"## {name}: {n:,} images, batches of {args.batch_size}; eager reference on "
        f"{len(ids)} ids in {ref_s:.1f} s (spread between images' logits >= {spread:.2f})"
    )

    spark_ms = spark_methods(spark, path, cfg, files, args)
    runs: dict[str, Callable[[], None]] = {}
    notes: dict[str, str] = {}
    for method in args.methods:
        if method in spark_ms:
            make = spark_ms[method]
            got = spark_check(make, spark, path, ids)
            runs[method] = lambda make=make: spark_run(make, spark, path)
        elif method == "daft":
            reason = daft_available()
            if reason is None:
                try:
                    got = daft_check(path, cfg, ids)
                    pixels = daft_pixels(path, ids)
                except Exception as e:
                    reason = f"daft failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if reason is not None:
                print(f"daft: skipped ({reason})")
                continue
            worst, mean = decoder_levels(pixels, images)
            off = compare(method, got, expected, float("inf"))
            own = score(model, [pixels[i] for i in ids], _images.array_rgb, args.batch_size)
            err = compare(method, got, dict(zip(ids, own, strict=True)), TOL)
            notes[method] = f"{err:.1e} (on its own decode)"
            print(
                f"  daft: its decoded pixels differ from Pillow's by {worst} levels at most "
                f"({mean:.2f} mean), its logits from the Pillow reference's by {off:.1e}"
            )
            runs[method] = lambda: daft_run(path, cfg)
            continue
        else:
            local = Local(model, path, args.batch_size, os.cpu_count() or 1)
            got = local(ids)
            runs[method] = local
        notes[method] = f"{compare(method, got, expected, TOL):.1e}"
    print(f"checked against the eager reference (tolerance {TOL:.0e}):")
    for method, note in notes.items():
        print(f"  {method}: {note}")

    # No separate warm-up: the checks above ran every method once (Python
    # workers started, modules imported, per-worker models loaded).
    cases = [_bench.Case(m, fn) for m, fn in runs.items()]
    for _ in range(args.repeats):
        for case in cases:
            t = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - t)
    print()
    report(n, cases, notes)
    ts = next((c for c in cases if c.name == "torchspark"), None)
    if ts is not None:
        others = [f"{c.name} {c.median / ts.median:.2f}x" for c in cases if c.name != "torchspark"]
        print(f"\ntorchspark rows/s over each method's: {', '.join(others)}")
    print()


def start_spark(args: argparse.Namespace, split_bytes: int):
    """spark_bench's session, input files split into ``split_bytes`` partitions."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(_images)  # the workers cannot import benchmarks/
    config = {"spark.sql.files.maxPartitionBytes": str(split_bytes)}
    return spark_bench.start_spark(args, "image_bench", config)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default=",".join(MODELS), help="comma list of %(default)s")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of %(default)s")
    p.add_argument("--images", type=int, default=None, help="JPEGs (default 5000; small 48)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (3; small 1)")
    p.add_argument("--small", action="store_true", help="a smoke run: 48 images, 1 repeat")
    p.add_argument("--batch-size", type=int, default=64, help="rows per model call")
    p.add_argument("--daft-instances", type=int, default=2, help="Daft UDF instances")
    _bench.spark_run_arguments(p, mrpb=1000)
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown {m!r}; expected some of {list(MODELS)}")
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; expected some of {METHODS}")
    args.images = args.images or (48 if args.small else 5000)
    if args.repeats is None:
        args.repeats = 1 if args.small else 3
    if args.repeats < 1 or args.images < 2:
        raise SystemExit("--repeats must be >= 1 and --images >= 2")
    args.rounds, args.quick = args.repeats, args.small  # for _bench.header
    return args


def main() -> None:
    args = parse_args()
    deadline = time.monotonic() + 900
    while args.wait_load > 0 and os.getloadavg()[0] >= args.wait_load:
        if time.monotonic() > deadline:
            break
        time.sleep(10)
    _bench.header("image_bench: image classification over Spark, local[2]", args)
    with tempfile.TemporaryDirectory(prefix="image_bench_") as workdir:
        t0 = time.perf_counter()
        images = _images.make_jpegs(args.images, seed=SEED)
        path = os.path.join(workdir, "images.parquet")
        table = pa.table(
            {
                "id": pa.array(np.arange(len(images), dtype=np.int64)),
                "image": pa.array(images, pa.binary()),
            }
        )
        pq.write_table(table, path, compression="none", row_group_size=max(1, len(images) // 16))
        size = os.path.getsize(path)
        sizes = [len(b) for b in images]
        print(
            f"data: {len(images):,} JPEGs, {statistics.mean(sizes) / 1024:.0f} KiB mean "
            f"({size / 2**20:.1f} MiB Parquet), made in {time.perf_counter() - t0:.1f} s"
        )
        spark = start_spark(args, split_bytes=size // args.partitions + 1)
        print(
            f"spark {spark.version} local[2] | maxRecordsPerBatch {args.mrpb} | "
            f"{args.partitions} input partitions | model batch {args.batch_size} rows | torch "
            f"threads per Python worker {args.threads} | repeats {args.repeats}"
            " (after the checks, which warm up) | times: wall s per run\n"
        )
        try:
            for name in args.models:
                run_model(spark, name, path, images, workdir, args)
        finally:
            spark.stop()
    _bench.footer()


if __name__ == "__main__":
    main()
