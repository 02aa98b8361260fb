"""Image preprocessing: torchspark's image input against a Python loop with Pillow or simplejpeg.

Workload: N = 256 JPEGs (``--quick``: 48; ``--images``), width and height each
uniform in 200-800 px (aspect ratios 1:4 to 4:1), quality 85-90, 4:2:0,
generated here with a seed (smooth gradients, low-frequency waves, mild
noise: ``_images.make_jpegs``), in one Arrow ``binary`` column. Every case
makes the same ``[N, 3, 224, 224]`` float32 batch: decode, RGB, resize the
shorter side to 256 (antialiased bilinear: Pillow's ``BILINEAR``), center
crop 224, ``(x / 255 - mean) / std`` with ImageNet's mean and std.

Cases, timed interleaved in one process (``_bench.run_interleaved``):

* torchspark, 1 thread: ``_C.input_tensors(batch, [Input(kind="image", ...)])``
  with ``torch.set_num_threads(1)``: the engine's staging (native decode with
  libjpeg-turbo, Pillow's fixed-point resize fused with crop and
  normalization, no Python, no GIL).
* torchspark, all threads: the same with ``torch.set_num_threads(nproc)``
  (rows are decoded in parallel); its per-core figure is images/s / nproc.
* Pillow: the loop a user writes: ``Image.open``, ``convert("RGB")``,
  ``resize(BILINEAR)``, ``crop``, numpy normalization into a preallocated
  batch. One thread.
* simplejpeg + Pillow: ``simplejpeg.decode_jpeg`` (the fastest Python JPEG
  decoder a user would pick; libjpeg-turbo) then the same Pillow resize, crop
  and normalization. One thread.

Checked first: torchspark's batch equals the Pillow loop's within float32
rounding of the normalization (atol 1e-5: Pillow's resize is reproduced
exactly, so the 8-bit pixels are equal). simplejpeg's decoder may differ from
Pillow's (another build of libjpeg-turbo, other defaults), so its batch must be
within 2 gray levels of torchspark's (2 / 255 / std in normalized units) with
a mean difference under 0.1 level; the script prints what it found.

Figures: images/s, images/s per core (the thread count the case used), and
each case's time relative to torchspark on 1 thread.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import torch
from _bench import Case, finish_args, footer, header, parser, ratio, run_interleaved, table, tm
from _images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE,
    SIZE,
    Normalize,
    make_jpegs,
    pillow_rgb,
    preprocess,
    simplejpeg_rgb,
)

import torchspark
from torchspark import _C


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, default_rounds=7, quick_rounds=3)
    p.add_argument("--images", type=int, default=None, help="images per batch (256; quick 48)")
    args = finish_args(p.parse_args(argv))
    header("decode_bench: Input(kind='image') decode + resize + normalize vs Python loops", args)
    n = args.images or (48 if args.quick else 256)
    cores = os.cpu_count() or 1
    images = make_jpegs(n, seed=0)
    batch = pa.record_batch({"image": pa.array(images, pa.binary())})
    spec = torchspark.Input(
        "image", kind="image", size=SIZE, resize=RESIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    native = [spec._native()]
    normalize = Normalize()

    def torchspark_at(threads: int):
        def fn() -> torch.Tensor:
            torch.set_num_threads(threads)
            (x,) = _C.input_tensors(batch, native)
            return x

        return fn

    def pillow() -> np.ndarray:
        return preprocess(images, pillow_rgb, normalize)

    def simplejpeg() -> np.ndarray:
        return preprocess(images, simplejpeg_rgb, normalize)

    # Same batch every way, checked before anything is timed.
    got = torchspark_at(1)()
    assert got.shape == (n, 3, SIZE, SIZE) and got.dtype == torch.float32
    torch.testing.assert_close(torchspark_at(cores)(), got, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(pillow()), got, rtol=0, atol=1e-5)
    levels = (
        (torch.from_numpy(simplejpeg()) - got).abs()
        * torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
        * 255
    )
    worst, mean = float(levels.max()), float(levels.mean())
    if worst > 2 + 1e-3 or mean > 0.1:
        raise SystemExit(
            f"simplejpeg + Pillow differs from torchspark by up to {worst:.2f} gray levels "
            f"(mean {mean:.3f}); expected at most 2 (mean under 0.1)"
        )

    cases = [
        Case("torchspark-1", torchspark_at(1)),
        Case("torchspark-all", torchspark_at(cores)),
        Case("pillow", pillow),
        Case("simplejpeg", simplejpeg),
    ]
    run_interleaved(cases, rounds=args.rounds, min_round_s=0.2)
    torch.set_num_threads(cores)
    threads = {"torchspark-1": 1, "torchspark-all": cores, "pillow": 1, "simplejpeg": 1}
    labels = {
        "torchspark-1": "torchspark image input, 1 thread",
        "torchspark-all": f"torchspark image input, {cores} threads",
        "pillow": "Pillow loop (open, RGB, resize, crop, numpy)",
        "simplejpeg": "simplejpeg decode + Pillow resize loop",
    }
    sizes = [len(d) for d in images]
    print(
        f"{n} JPEGs of 200-800 px (mean {np.mean(sizes) / 1024:.0f} KiB) -> "
        f"[{n}, 3, {SIZE}, {SIZE}] float32 (resize {RESIZE}, center crop {SIZE}, ImageNet "
        f"mean/std); torchspark equals Pillow within 1e-5; simplejpeg within {worst:.2f} "
        f"gray levels of it (mean {mean:.4f})\n"
    )
    one = cases[0].median
    rows = [
        (
            labels[c.name],
            tm(c),
            f"{n / c.median:,.0f}",
            f"{n / c.median / threads[c.name]:,.0f}",
            ratio(c.median / one),
        )
        for c in cases
    ]
    print(
        table(
            ["case", "time per batch", "images/s", "images/s per core", "time / torchspark-1"],
            rows,
        )
    )
    per_core = {c.name: n / c.median / threads[c.name] for c in cases}
    print(
        f"\nper core, torchspark is {per_core['torchspark-1'] / per_core['pillow']:.2f}x the "
        f"Pillow loop and {per_core['torchspark-1'] / per_core['simplejpeg']:.2f}x simplejpeg + "
        f"Pillow; on {cores} threads it keeps "
        f"{per_core['torchspark-all'] / per_core['torchspark-1']:.0%} of its 1-thread rate per core"
    )
    footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
