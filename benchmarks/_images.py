"""Shared image helpers for ``decode_bench.py`` and ``image_bench.py``.

Not a benchmark itself. Holds the generated workload (JPEGs made here with a
seed, no download) and the Python preprocessing a user writes without
torchspark: decode, ``convert("RGB")``, Pillow ``BILINEAR`` resize of the
shorter side, center crop, ``(x / 255 - mean) / std`` with numpy.

The geometry is torchvision's ``Resize(S)`` + ``CenterCrop(C)`` for PIL
images (the shorter side to S, the longer to ``int(S * long / short)``; crop
offsets ``int(round((resized - C) / 2))``), which ``Input(kind="image",
resize=S, size=C)`` reproduces.
"""

from __future__ import annotations

import io

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE = 224  # the crop fed to the model
RESIZE = 256  # the shorter side before the crop


def make_jpegs(n: int, seed: int = 0, low: int = 200, high: int = 800) -> list[bytes]:
    """``n`` JPEGs, width and height each uniform in ``[low, high]`` (so aspect
    ratios from 1:4 to 4:1), quality 85-90 (4:2:0, Pillow's default):
    smooth color gradients with a few low-frequency waves and mild noise, so
    the files are photo-sized (tens of KB), not noise-sized."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    # One noise field, cropped at random offsets: drawing fresh noise per image
    # took most of the time.
    noise = rng.normal(0, 6, (high, high, 3)).astype(np.float32)
    out = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(low, high + 1, 2))
        x = np.arange(w, dtype=np.float32)
        y = np.arange(h, dtype=np.float32)[:, None]
        fx, fy, phase = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6.3)
        wave = 60 * np.sin(fx * x + phase) * np.cos(fy * y)  # [h, w], an outer product
        oy, ox = int(rng.integers(0, high - h + 1)), int(rng.integers(0, high - w + 1))
        pixels = noise[oy : oy + h, ox : ox + w] + wave[..., None]
        pixels[..., 0] += x * (255 / max(w - 1, 1))
        pixels[..., 1] += y * (255 / max(h - 1, 1))
        pixels[..., 2] += (x + y) * (127 / (w + h))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(85, 91)))
        out.append(buffer.getvalue())
    return out


def geometry(w: int, h: int, size: int = SIZE, resize: int = RESIZE) -> tuple[int, int, int, int]:
    """``(resized_w, resized_h, left, top)``: torchvision's Resize + CenterCrop."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if w <= h else (new_long, resize)
    return new_w, new_h, round((new_w - size) / 2.0), round((new_h - size) / 2.0)


class Normalize:
    """``(x / 255 - mean) / std`` of a uint8 ``[H, W, 3]`` array into ``out``
    (``[3, H, W]`` float32), as ``x * scale + shift`` in float32 (what a user
    writes with numpy; equal to the float64 formula within float32 rounding)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
        self.shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(
            np.float32
        )

    def __call__(self, rgb: np.ndarray, out: np.ndarray) -> None:
        out[...] = (rgb.astype(np.float32) * self.scale + self.shift).transpose(2, 0, 1)


def resize_crop(image, size: int = SIZE, resize: int = RESIZE) -> np.ndarray:
    """A PIL RGB image resized (Pillow BILINEAR, shorter side ``resize``) and
    center-cropped to ``size``: uint8 ``[size, size, 3]``."""
    from PIL import Image

    new_w, new_h, left, top = geometry(image.width, image.height, size, resize)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(image.crop((left, top, left + size, top + size)))


def pillow_rgb(data: bytes):
    """Pillow's decode (its libjpeg-turbo), as RGB."""
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def simplejpeg_rgb(data: bytes):
    """``simplejpeg.decode_jpeg`` (libjpeg-turbo, accurate DCT and upsampling
    by default) wrapped as a PIL image for the resize."""
    import simplejpeg
    from PIL import Image

    return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB"))


def array_rgb(array: np.ndarray):
    """An already decoded ``[H, W, 3]`` uint8 array (Daft's decode) as a PIL image."""
    from PIL import Image

    return Image.fromarray(array)


def preprocess(images: list, decode=pillow_rgb, normalize: Normalize | None = None) -> np.ndarray:
    """The Python loop: decode, resize, crop, normalize into ``[N, 3, SIZE, SIZE]``."""
    normalize = normalize or Normalize()
    out = np.empty((len(images), 3, SIZE, SIZE), np.float32)
    for i, data in enumerate(images):
        normalize(resize_crop(decode(data)), out[i])
    return out
