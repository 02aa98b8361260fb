"""The native "image" input kind, through ``_C.input_tensors`` and ``_C.Engine``.

References, all independent of torchspark:

* Pillow: its own decoders (libjpeg-turbo, libpng/zlib, libwebp, in Pillow's
  wheel), ``ImageOps.exif_transpose``, ``convert("RGB")`` and
  ``Image.resize(..., BILINEAR)``, torchvision's geometry for PIL images
  (``Resize(S)``: shorter side to S, longer to ``int(S * long / short)``;
  ``CenterCrop``: offsets ``int(round((size - crop) / 2))``) and numpy's
  ``(x / 255 - mean) / std``. torchspark reproduces Pillow's fixed-point
  resize, so the 8-bit pixels must be *equal*: the tolerance is float32
  rounding of the normalization (1e-6), not a fraction of a gray level.
* ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` on the
  float image: the same triangle filter computed in floating point without
  Pillow's two 8-bit roundings (after each pass). Each rounding moves a value
  by at most half a level and the second pass averages the first's errors
  with weights summing to 1, so the two differ by at most 1/255 (+1e-5 for
  the fixed-point weights and float32).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pytest
import torch

import torchspark
from torchspark import _C

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")

EXACT = {"rtol": 0.0, "atol": 1e-6}
ONE_LEVEL = 1.0 / 255 + 1e-5
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------
# helpers


def pixels(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """A smooth image with noise: gradients survive JPEG, noise exercises the filter."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1
    )
    base = np.concatenate([base] * 2, -1)[..., :channels]
    noise = rng.integers(-30, 31, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def jpeg(array: np.ndarray, **kw) -> bytes:
    return encode(Image.fromarray(array), "JPEG", quality=kw.pop("quality", 90), **kw)


def spec(column: str = "image", **options) -> dict:
    return {"kind": "image", "columns": [column], "options": options}


def stage(values, type_=None, **options) -> torch.Tensor:
    batch = pa.record_batch({"image": pa.array(values, type_ or pa.binary())})
    (x,) = _C.input_tensors(batch, [spec(**options)])
    return x


def out_size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def geometry(w: int, h: int, size, resize) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized_w, resized_h), (left, top)) as torchvision computes them."""
    out_h, out_w = out_size(size)
    if resize == "stretch":
        return (out_w, out_h), (0, 0)
    s = max(out_h, out_w) if resize is None else resize
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(s * long / short)
    new_w, new_h = (s, new_long) if w <= h else (new_long, s)
    return (new_w, new_h), (round((new_w - out_w) / 2.0), round((new_h - out_h) / 2.0))


def pil_reference(rgb, size=224, resize=None, mean=(0, 0, 0), std=(1, 1, 1)) -> torch.Tensor:
    """Pillow's resize + crop of an RGB PIL image, normalized: float32 [3, H, W]."""
    out_h, out_w = out_size(size)
    (new_w, new_h), (left, top) = geometry(rgb.width, rgb.height, size, resize)
    resized = rgb if (new_w, new_h) == rgb.size else rgb.resize((new_w, new_h), Image.BILINEAR)
    cropped = np.asarray(resized.crop((left, top, left + out_w, top + out_h)), dtype=np.float64)
    normalized = (cropped / 255.0 - np.asarray(mean)) / np.asarray(std)
    return torch.from_numpy(normalized.astype(np.float32)).permute(2, 0, 1)


def pillow_decode(data: bytes):
    """Pillow's own decode, EXIF orientation applied, as RGB."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def torch_reference(rgb_array: np.ndarray, size=224, resize=None) -> torch.Tensor:
    """F.interpolate(antialias=True) on the float image, cropped: [3, H, W] in [0, 1]."""
    h, w = rgb_array.shape[:2]
    out_h, out_w = out_size(size)
    (new_w, new_h), (left, top) = geometry(w, h, size, resize)
    x = torch.from_numpy(np.array(rgb_array)).permute(2, 0, 1)[None].double()
    y = torch.nn.functional.interpolate(
        x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )
    return (y[0, :, top : top + out_h, left : left + out_w] / 255).float()


# ---------------------------------------------------------------------------
# formats and geometry against Pillow


FORMATS = {
    "jpeg420": lambda a: jpeg(a, quality=85),
    "jpeg444": lambda a: jpeg(a, quality=95, subsampling=0),
    "jpeg_progressive": lambda a: jpeg(a, progressive=True),
    "png": lambda a: encode(Image.fromarray(a), "PNG"),
    "png_interlaced": lambda a: encode(Image.fromarray(a), "PNG", interlace=1),
    "webp_lossy": lambda a: encode(Image.fromarray(a), "WEBP", quality=80),
    "webp_lossless": lambda a: encode(Image.fromarray(a), "WEBP", lossless=True),
}

GEOMETRIES = [
    {"size": 32},  # shorter side to 32, center crop
    {"size": [24, 40]},  # non-square crop of a shorter side of 40
    {"size": [20, 30], "resize": 36},  # torchvision's Resize(36) + CenterCrop((20, 30))
    {"size": [20, 30], "resize": "stretch"},
    {"size": [90, 70], "resize": "stretch"},  # an upscale
]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("geometry_options", GEOMETRIES, ids=str)
def test_matches_pillow(rng, fmt, geometry_options):
    images = [pixels(rng, 61, 83), pixels(rng, 97, 45), pixels(rng, 50, 50)]
    data = [FORMATS[fmt](a) for a in images]
    x = stage(data, mean=IMAGENET_MEAN, std=IMAGENET_STD, **geometry_options)
    h, w = out_size(geometry_options["size"])
    assert x.shape == (3, 3, h, w) and x.dtype == torch.float32 and x.is_contiguous()
    for row, encoded in zip(x, data, strict=True):
        expected = pil_reference(
            pillow_decode(encoded),
            geometry_options["size"],
            geometry_options.get("resize"),
            IMAGENET_MEAN,
            IMAGENET_STD,
        )
        torch.testing.assert_close(row, expected, **EXACT)


@pytest.mark.parametrize("geometry_options", GEOMETRIES, ids=str)
@pytest.mark.parametrize("hw", [(61, 83), (97, 45), (7, 300), (16, 16)])
def test_matches_torch_antialiased_interpolate(rng, geometry_options, hw):
    array = pixels(rng, *hw)
    x = stage([encode(Image.fromarray(array), "PNG")], **geometry_options)
    expected = torch_reference(array, geometry_options["size"], geometry_options.get("resize"))
    torch.testing.assert_close(x[0], expected, rtol=0, atol=ONE_LEVEL)


def test_large_downscale_matches_both_references(rng):
    array = pixels(rng, 480, 640)
    data = jpeg(array, quality=92)
    x = stage([data], size=[56, 72])
    decoded = pillow_decode(data)
    torch.testing.assert_close(x[0], pil_reference(decoded, [56, 72]), **EXACT)
    torch.testing.assert_close(
        x[0], torch_reference(np.asarray(decoded), [56, 72]), rtol=0, atol=ONE_LEVEL
    )


@pytest.mark.parametrize("fmt", ["jpeg420", "png", "webp_lossless"])
@pytest.mark.parametrize("resize", [None, "stretch"])
def test_one_pixel_image(rng, fmt, resize):
    array = np.array([[[200, 17, 90]]], dtype=np.uint8)
    data = FORMATS[fmt](array)
    x = stage([data], size=[3, 5], resize=resize)
    expected = pil_reference(pillow_decode(data), [3, 5], resize)
    torch.testing.assert_close(x[0], expected, **EXACT)
    if fmt != "jpeg420":  # lossless: every output pixel is the one input pixel
        torch.testing.assert_close(
            x[0], torch.tensor([200, 17, 90.0])[:, None, None] / 255 + 0 * x[0]
        )


def test_same_size_is_the_image_itself(rng):
    array = pixels(rng, 24, 24)
    x = stage([encode(Image.fromarray(array), "PNG")], size=24)
    torch.testing.assert_close(x[0], torch.from_numpy(array).permute(2, 0, 1) / 255.0, **EXACT)


def test_center_crop_rounds_half_to_even(rng):
    # Resized widths 45 and 47 leave 5 and 7 columns: round(2.5) = 2, round(3.5) = 4.
    for w in (45, 47):
        array = pixels(rng, 40, w)
        x = stage([encode(Image.fromarray(array), "PNG")], size=40)
        left = round((w - 40) / 2.0)
        expected = torch.from_numpy(array[:, left : left + 40]).permute(2, 0, 1) / 255.0
        torch.testing.assert_close(x[0], expected, **EXACT)


def test_many_rows_of_varied_sizes_large_binary(rng):
    arrays = [pixels(rng, int(h), int(w)) for h, w in rng.integers(8, 120, (40, 2))]
    data = [FORMATS[("jpeg420", "png", "webp_lossy")[i % 3]](a) for i, a in enumerate(arrays)]
    x = stage(data, pa.large_binary(), size=[16, 20])
    for row, encoded in zip(x, data, strict=True):
        torch.testing.assert_close(row, pil_reference(pillow_decode(encoded), [16, 20]), **EXACT)


def test_chunked_column_and_rows_named_across_chunks(rng):
    good = jpeg(pixels(rng, 20, 20))
    table = pa.table({"image": pa.chunked_array([[good, good], [good, b"\xff\xd8\xffjunk"]])})
    with pytest.raises(ValueError, match=r"column 'image': .*\(first in row 3\)"):
        _C.input_tensors(table, [spec(size=8)])
    table = pa.table({"image": pa.chunked_array([[good], [good, good]])})
    (x,) = _C.input_tensors(table, [spec(size=8)])
    expected = pil_reference(pillow_decode(good), 8)
    for row in x:
        torch.testing.assert_close(row, expected, **EXACT)


# ---------------------------------------------------------------------------
# color conversions


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
        ("RGBA", "WEBP"),
    ],
)
def test_color_modes_match_pillow_convert_rgb(rng, mode, fmt):
    channels = {"L": 1, "LA": 2, "RGBA": 4, "CMYK": 4, "P": 3, "1": 1}[mode]
    array = pixels(rng, 37, 29, channels)
    if mode == "P":
        image = Image.fromarray(array).quantize(colors=40)
        image.info["transparency"] = 3  # a tRNS chunk: dropped, as convert("RGB") drops it
    elif mode == "1":
        image = Image.fromarray(array[..., 0]).convert("1")
    else:
        image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    if mode == "P":
        kw["transparency"] = 3
    data = encode(image, fmt, **kw)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == ("RGBA" if fmt == "WEBP" else mode)
    x = stage([data], size=[37, 29], resize="stretch")
    expected = pil_reference(decoded.convert("RGB"), [37, 29], "stretch")
    torch.testing.assert_close(x[0], expected, **EXACT)


def test_cmyk_jpeg_values(rng):
    # Pillow stores CMYK JPEGs inverted (Adobe's convention) and converts
    # R = (255 - k) * (1 - c / 255), rounded: check a few values by hand too.
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[..., 0] = 255  # full cyan: no red
    cmyk[4:, :, 3] = 128  # half black below
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    x = stage([data], size=8) * 255
    expected = pil_reference(pillow_decode(data), 8) * 255
    torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-3)
    assert float(x[0, 0].max()) <= 3  # red ~ 0
    assert abs(float(x[0, 1, 0, 0]) - 255) <= 3 and abs(float(x[0, 1, 7, 0]) - 127) <= 3


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (gray [h, w] or RGB [h, w, 3]) written by hand."""
    h, w = array.shape[:2]
    color = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_keeps_the_high_byte(rng, channels):
    shape = (13, 17) if channels == 1 else (13, 17, 3)
    array = rng.integers(0, 65536, shape, dtype=np.uint16)
    data = png16(array)
    high = (array >> 8).astype(np.uint8)
    rgb = np.repeat(high[..., None], 3, -1) if channels == 1 else high
    if channels == 3:  # Pillow reads 16-bit RGB as 8-bit RGB by the high byte too
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
    x = stage([data], size=[13, 17], resize="stretch")
    torch.testing.assert_close(x[0], torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, **EXACT)


# ---------------------------------------------------------------------------
# EXIF orientation


def exif_app1(orientation: int, big_endian: bool) -> bytes:
    """An APP1 Exif segment holding IFD0 with one Orientation (0x0112) SHORT."""
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(e + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif(data: bytes, orientation: int, big_endian: bool) -> bytes:
    assert data[:2] == b"\xff\xd8"
    return data[:2] + exif_app1(orientation, big_endian) + data[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("big_endian", [False, True])
def test_exif_orientation_matches_exif_transpose(rng, orientation, big_endian):
    array = pixels(rng, 30, 44)
    data = with_exif(jpeg(array, quality=95, subsampling=0), orientation, big_endian)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation  # Pillow reads it
    for options in ({"size": [30, 44], "resize": "stretch"}, {"size": [20, 28]}):
        x = stage([data], **options)
        expected = pil_reference(pillow_decode(data), options["size"], options.get("resize"))
        torch.testing.assert_close(x[0], expected, **EXACT)
    if orientation >= 5:  # transposed: a portrait of the landscape
        assert pillow_decode(data).size == (30, 44)


def test_exif_written_by_pillow(rng):
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(pixels(rng, 20, 36)), "JPEG", exif=exif.tobytes())
    x = stage([data], size=[36, 20], resize="stretch")
    torch.testing.assert_close(
        x[0], pil_reference(pillow_decode(data), [36, 20], "stretch"), **EXACT
    )


# ---------------------------------------------------------------------------
# Spark's image source: struct<origin, height, width, nChannels, mode, data>


def spark_image_struct(rows: list, **overrides) -> pa.Array:
    """Rows of (origin, height, width, nChannels, mode, data) as Spark's image source makes."""
    names = ["origin", "height", "width", "nChannels", "mode", "data"]
    types = [pa.string(), pa.int32(), pa.int32(), pa.int32(), pa.int32(), pa.binary()]
    columns = [[None if r is None else r[i] for r in rows] for i in range(6)]
    arrays = [pa.array(c, t) for c, t in zip(columns, types, strict=True)]
    mask = pa.array([r is None for r in rows])
    return pa.StructArray.from_arrays(arrays, names=names, mask=mask)


def spark_row(origin: str, rgb: np.ndarray, channels: int):
    h, w = rgb.shape[:2]
    if channels == 1:
        data = rgb[..., 0]
    elif channels == 3:
        data = rgb[..., ::-1]  # BGR
    else:
        data = np.concatenate([rgb[..., ::-1], np.full((h, w, 1), 77, np.uint8)], -1)  # BGRA
    mode = {1: 0, 3: 16, 4: 24}[channels]
    return (origin, h, w, channels, mode, np.ascontiguousarray(data).tobytes())


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("resize", [None, "stretch"])
def test_spark_image_struct(rng, channels, resize):
    rgbs = [pixels(rng, 33, 47), pixels(rng, 52, 21)]
    if channels == 1:
        rgbs = [np.repeat(a[..., :1], 3, -1) for a in rgbs]
    rows = [spark_row(f"file:/img{i}.png", a, channels) for i, a in enumerate(rgbs)]
    batch = pa.record_batch({"image": spark_image_struct(rows)})
    (x,) = _C.input_tensors(batch, [spec(size=[16, 24], resize=resize)])
    for row, rgb in zip(x, rgbs, strict=True):
        expected = pil_reference(Image.fromarray(rgb), [16, 24], resize)
        torch.testing.assert_close(row, expected, **EXACT)


def test_spark_image_struct_errors(rng):
    rgb = pixels(rng, 10, 10)
    good = spark_row("file:/good.png", rgb, 3)
    short = (*good[:5], good[5][:-1])
    batch = pa.record_batch({"image": spark_image_struct([good, short])})
    with pytest.raises(
        ValueError,
        match=r"column 'image': a Spark image row's data has 299 bytes \(first in row 1\); "
        r"origin 'file:/good.png'; expected height 10 x width 10 x nChannels 3 = 300",
    ):
        _C.input_tensors(batch, [spec(size=8)])
    invalid = ("file:/broken.jpg", -1, -1, -1, -1, b"")  # Spark's row for an unreadable file
    batch = pa.record_batch({"image": spark_image_struct([invalid])})
    with pytest.raises(ValueError, match=r"height -1 and width -1 \(Spark's mark.*broken\.jpg"):
        _C.input_tensors(batch, [spec(size=8)])
    wrong_mode = (*good[:4], 24, good[5])
    batch = pa.record_batch({"image": spark_image_struct([wrong_mode])})
    with pytest.raises(ValueError, match=r"mode 24 and nChannels 3 \(first in row 0\)"):
        _C.input_tensors(batch, [spec(size=8)])
    no_data = pa.StructArray.from_arrays([pa.array([1]), pa.array([1])], names=["height", "width"])
    with pytest.raises(TypeError, match=r"needs a field 'nChannels'"):
        _C.input_tensors(pa.record_batch({"image": no_data}), [spec(size=8)])


def test_spark_image_struct_nulls(rng):
    good = spark_row("file:/a.png", pixels(rng, 8, 8), 3)
    batch = pa.record_batch({"image": spark_image_struct([good, None])})
    with pytest.raises(torchspark.NullValueError, match=r"1 null image \(first in row 1\)"):
        _C.input_tensors(batch, [spec(size=8)])
    (x,) = _C.input_tensors(batch, [spec(size=8, nulls="fill")])
    assert torch.count_nonzero(x[1]) == 0 and torch.count_nonzero(x[0]) > 0


# ---------------------------------------------------------------------------
# layouts and dtypes


def test_channels_last(rng):
    data = [jpeg(pixels(rng, 40, 60)), jpeg(pixels(rng, 70, 30))]
    plain = stage(data, size=[24, 32])
    x = stage(data, size=[24, 32], channels_last=True)
    assert x.shape == (2, 3, 24, 32)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    torch.testing.assert_close(x, plain, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(rng, dtype):
    data = [jpeg(pixels(rng, 40, 60))]
    x = stage(data, size=24, dtype=dtype, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert x.dtype == dtype
    expected = pil_reference(pillow_decode(data[0]), 24, None, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(x, expected[None].to(dtype))


def test_mean_std_scalars_and_defaults(rng):
    data = [encode(Image.fromarray(pixels(rng, 9, 9)), "PNG")]
    raw = stage(data, size=9)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1  # default: x / 255
    torch.testing.assert_close(stage(data, size=9, mean=0.5, std=0.5), (raw - 0.5) / 0.5)
    torch.testing.assert_close(
        stage(data, size=9, mean=[0, 0, 1], std=[1, 2, 4]),
        (raw - torch.tensor([0, 0, 1.0])[:, None, None]) / torch.tensor([1, 2, 4.0])[:, None, None],
    )


def test_zero_rows():
    (x,) = _C.input_tensors(
        pa.record_batch({"image": pa.array([], pa.binary())}), [spec(size=[5, 6])]
    )
    assert x.shape == (0, 3, 5, 6)


# ---------------------------------------------------------------------------
# errors: every one names the column and the row, and shows the bytes


def test_nulls(rng):
    good = jpeg(pixels(rng, 12, 12))
    with pytest.raises(
        torchspark.NullValueError, match=r"column 'image': 2 null images \(first in row 1\)"
    ):
        stage([good, None, good, None], size=8)
    x = stage([good, None], size=8, nulls="fill")
    torch.testing.assert_close(x[0], pil_reference(pillow_decode(good), 8), **EXACT)
    assert torch.count_nonzero(x[1]) == 0
    with pytest.raises(ValueError, match="'error' or 'fill'"):
        stage([good], size=8, nulls="mask")


def test_empty_bytes():
    with pytest.raises(ValueError, match=r"empty value.*\(first in row 1\); got 0 bytes \(empty\)"):
        stage([jpeg(np.zeros((4, 4, 3), np.uint8)), b""], size=4)


def test_unsupported_formats_are_named(rng):
    html = b"<html><body>404</body></html>"
    with pytest.raises(
        ValueError,
        match=r"column 'image': cannot decode: unsupported format: the bytes are not a JPEG.*"
        r"\(first in row 0\); got 29 bytes starting 3c 68 74 6d 6c 3e 3c 62 \('<html><b'\)",
    ):
        stage([html], size=4)
    gif = encode(Image.fromarray(pixels(rng, 5, 5)), "GIF")
    with pytest.raises(ValueError, match=r"a GIF image; expected a JPEG, PNG or WebP.*47 49 46 38"):
        stage([gif], size=4)
    bmp = encode(Image.fromarray(pixels(rng, 5, 5)), "BMP")
    with pytest.raises(ValueError, match=r"a BMP image"):
        stage([bmp], size=4)


def test_corrupt_header(rng):
    with pytest.raises(ValueError, match=r"cannot decode: JPEG: .*\(first in row 0\).*ff d8 ff"):
        stage([b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 100, dtype=np.uint8))], size=4)
    png = encode(Image.fromarray(pixels(rng, 8, 8)), "PNG")
    with pytest.raises(ValueError, match=r"PNG: no IHDR chunk.*\(first in row 0\)"):
        stage([png[:20]], size=4)
    corrupt = bytearray(png)
    corrupt[40:60] = bytes(20)  # inside IDAT: the CRC or the zlib stream fails
    with pytest.raises(ValueError, match=r"cannot decode: PNG: .*\(first in row 0\)"):
        stage([bytes(corrupt)], size=4)
    webp = encode(Image.fromarray(pixels(rng, 8, 8)), "WEBP")
    with pytest.raises(ValueError, match=r"cannot decode: WebP: .*\(first in row 0\)"):
        stage([webp[:40]], size=4)


def test_truncated_jpeg_is_an_error_not_gray_pixels(rng):
    good = jpeg(pixels(rng, 64, 64))
    truncated = good[: len(good) // 2]
    # Pillow refuses it too (unless told to load truncated images).
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(truncated)).load()
    with pytest.raises(
        ValueError,
        match=r"column 'image': cannot decode: JPEG: Premature end of JPEG file "
        r"\(first in row 2\); got \d+ bytes starting ff d8 ff e0",
    ):
        stage([good, good, truncated, good], size=8)


def test_truncated_png_and_webp(rng):
    array = pixels(rng, 64, 64)
    png = encode(Image.fromarray(array), "PNG")
    with pytest.raises(ValueError, match=r"PNG: .*\(first in row 0\)"):
        stage([png[: len(png) // 2]], size=8)
    webp = encode(Image.fromarray(array), "WEBP", quality=80)
    with pytest.raises(ValueError, match=r"WebP: .*\(first in row 1\)"):
        stage([webp, webp[: len(webp) - 40]], size=8)


def test_staging_error_names_the_lowest_bad_row(rng):
    good = jpeg(pixels(rng, 32, 32))
    bad = good[: len(good) - 200]
    values = [good] * 5 + [bad] + [good] * 6 + [bad] * 3
    with pytest.raises(ValueError, match=r"\(first in row 5\)"):
        stage(values, size=8)


def test_pixel_limit(rng):
    data = jpeg(pixels(rng, 30, 40))
    with pytest.raises(
        ValueError,
        match=r"an image of 40 x 30 = 1200 pixels, over max_pixels = 1199 .*decompression bombs.*"
        r"\(first in row 0\)",
    ):
        stage([data], size=8, max_pixels=1199)
    stage([data], size=8, max_pixels=1200)


def test_default_pixel_limit_refuses_a_bomb_before_decoding(rng):
    # A PNG whose header says 20000 x 20000 (400 Mpx, 1.2 GB as RGB) with no pixels
    # behind it: refused from the header, nothing allocated.
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(
        ValueError, match=r"20000 x 20000 = 400000000 pixels, over max_pixels = 89478485"
    ):
        stage([bomb], size=8)
    # A JPEG whose SOF says 30000 x 30000.
    good = bytearray(jpeg(pixels(rng, 8, 8)))
    sof = good.index(b"\xff\xc0")
    good[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    with pytest.raises(ValueError, match=r"30000 x 30000 = 900000000 pixels"):
        stage([bytes(good)], size=8)


def test_zero_size_image_refused():
    zero = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ValueError, match=r"a zero-size image \(0 x 5 pixels\).*\(first in row 0\)"):
        stage([zero], size=8)


def test_wrong_column_type():
    with pytest.raises(TypeError, match=r"column 'image': an image input takes a binary column"):
        stage([1.0, 2.0], pa.float64(), size=8)
    with pytest.raises(ValueError, match="exactly one column"):
        _C.input_tensors(
            pa.record_batch({"a": pa.array([b""]), "b": pa.array([b""])}),
            [{"kind": "image", "columns": ["a", "b"], "options": {}}],
        )


@pytest.mark.parametrize(
    "options,error,pattern",
    [
        ({"size": [1, 2, 3]}, ValueError, "takes an int or \\[h, w\\]"),
        ({"size": 0}, ValueError, "whole numbers >= 1"),
        ({"size": [2.5, 3]}, ValueError, "whole numbers >= 1"),
        ({"size": "big"}, TypeError, "must be an int or \\[h, w\\]"),
        ({"size": 32, "resize": 16}, ValueError, "at least the larger side"),
        ({"resize": "crop"}, ValueError, "'stretch'"),
        ({"mean": [0.5, 0.5]}, ValueError, "takes 3 numbers"),
        ({"std": [1, 0, 1]}, ValueError, "must not hold a zero"),
        ({"dtype": torch.int64}, ValueError, "float32, float64, float16 or bfloat16"),
        ({"channels_last": 1}, TypeError, "must be a bool"),
        ({"max_pixels": 0}, ValueError, "must be >= 1"),
        ({"colour": "rgb"}, ValueError, "unknown option 'colour'"),
    ],
)
def test_option_errors(options, error, pattern):
    with pytest.raises(error, match=pattern):
        stage([b"x"], **options)


def test_image_kind_is_registered():
    assert "image" in _C.input_kinds()


# ---------------------------------------------------------------------------
# through the engine


class TinyConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean(dim=(2, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_engine_runs_images_like_eager(rng, tmp_path, channels_last):
    module = TinyConv().eval()
    path = torchspark.export(module, torch.rand(2, 3, 20, 28), str(tmp_path / "conv.pt"))
    model = _C.load_model(path, torch.device("cpu"), 1)
    options = _C.EngineOptions(device=torch.device("cpu"), batch_size=5, max_delay_ms=50.0)
    image_spec = spec(
        size=[20, 28], mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=channels_last
    )
    engine = _C.Engine(model, options, [image_spec])
    try:
        batches = []
        for n in (7, 3, 1):
            data = [
                FORMATS[("jpeg420", "png", "webp_lossy")[i % 3]](pixels(rng, 30 + 7 * i, 41))
                for i in range(n)
            ]
            batches.append(data)
        requests = [
            engine.run_arrow(pa.record_batch({"image": pa.array(d, pa.binary())}), False)
            for d in batches
        ]
        engine.flush()
        for data, request in zip(batches, requests, strict=True):
            _, (out,) = request.result()
            reference = torch.stack(
                [
                    pil_reference(pillow_decode(d), [20, 28], None, IMAGENET_MEAN, IMAGENET_STD)
                    for d in data
                ]
            )
            with torch.no_grad():
                torch.testing.assert_close(out, module(reference))
        # A stream that fails at staging fails its batch (a ModelError, as the
        # engine reports any batch failure) naming the request's row.
        good = batches[0][0]
        bad = pa.record_batch({"image": pa.array([good, good[:-300]], pa.binary())})
        request = engine.run_arrow(bad, False)
        engine.flush()
        with pytest.raises(
            torchspark.ModelError,
            match=r"request \d+ rows \[0, 2\)\) failed: column 'image': cannot decode: JPEG: "
            r"Premature end of JPEG file \(first in row 1\)",
        ):
            request.result()
    finally:
        engine.close(True)


# ---------------------------------------------------------------------------
# through torchspark.Input, Engine and predict


def test_input_kind_image_through_the_engine(rng, tmp_path):
    module = TinyConv().eval()
    path = torchspark.export(module, torch.rand(2, 3, 24, 24), str(tmp_path / "conv.pt"))
    data = [
        FORMATS[("jpeg420", "png", "webp_lossy")[i % 3]](pixels(rng, 30 + 9 * i, 50))
        for i in range(9)
    ]
    spec = torchspark.Input(
        "image", kind="image", size=24, resize=28, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert spec.mean == tuple(IMAGENET_MEAN)  # hashable, one repr
    with torchspark.Engine(path, inputs=spec, batch_size=4) as engine:
        got = engine.run(pa.record_batch({"image": pa.array(data, pa.binary())}))
    reference = torch.stack(
        [pil_reference(pillow_decode(d), 24, 28, IMAGENET_MEAN, IMAGENET_STD) for d in data]
    )
    with torch.no_grad():
        torch.testing.assert_close(got, module(reference))
    with pytest.raises(ValueError, match=r"only kind 'image' takes these"):
        torchspark.Input("x", kind="tensor", size=24)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A folder of PNG files of varied sizes (PNG: Java's ImageIO, which Spark's
    image source uses, and Pillow decode it to the same pixels)."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("images")
    arrays = {}
    for i in range(12):
        array = pixels(rng, 20 + 7 * i, 60 - 3 * i)
        name = f"img{i:02d}.png"
        Image.fromarray(array).save(root / name)
        arrays[name] = array
    return str(root), arrays


@pytest.mark.spark
def test_predict_over_spark_binary_file_and_image_sources(spark, image_files, tmp_path):
    root, arrays = image_files
    module = TinyConv().eval()
    path = torchspark.export(module, torch.rand(2, 3, 16, 16), str(tmp_path / "conv.pt"))

    def expected(name: str) -> list[float]:
        ref = pil_reference(Image.fromarray(arrays[name]), 16, None, IMAGENET_MEAN, IMAGENET_STD)
        with torch.no_grad():
            return module(ref[None])[0].tolist()

    spec = dict(size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    files = spark.read.format("binaryFile").load(root)
    scored = torchspark.predict(
        files, path, inputs=torchspark.Input("content", kind="image", **spec), keep=["path"]
    )
    got = {os.path.basename(r["path"]): r["prediction"] for r in scored.collect()}
    assert sorted(got) == sorted(arrays)
    for name, values in got.items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(expected(name)))

    images = spark.read.format("image").load(root)
    scored = torchspark.predict(
        images,
        path,
        inputs=torchspark.Input("image", kind="image", **spec),
        output="embedding",
    )
    got = {os.path.basename(r["image"]["origin"]): r["embedding"] for r in scored.collect()}
    assert sorted(got) == sorted(arrays)
    for name, values in got.items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(expected(name)))


@pytest.mark.spark
def test_a_corrupt_file_names_its_row_and_path(spark, image_files, tmp_path):
    root, arrays = image_files
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in list(arrays)[:3]:
        with open(os.path.join(root, name), "rb") as f:
            (bad / name).write_bytes(f.read())
    (bad / "img99.png").write_bytes(b"<html>not an image</html>")
    module = TinyConv().eval()
    path = torchspark.export(module, torch.rand(2, 3, 16, 16), str(tmp_path / "conv.pt"))
    files = spark.read.format("binaryFile").load(str(bad)).coalesce(1)
    spec = torchspark.Input("content", kind="image", size=16)
    # Found on the driver's probe batch here (4 rows); on an executor, the
    # task's error names it the same way.
    with pytest.raises(
        Exception, match=r"(?s)unsupported format.*'<html>.*row 3 \(path='file:.*img99\.png'"
    ):
        torchspark.predict(files, path, inputs=spec, keep=["path"]).collect()
