"""Writes the seed corpora of the fuzzers under tests/fuzz/corpus/ (committed).

    .venv/bin/python tests/fuzz/make_corpus.py            # image_decode, model_sniff, model_load
    .venv/bin/python tests/fuzz/make_corpus.py --arrow build/fuzz/tests/fuzz/arrow_import_fuzzer
    .venv/bin/python tests/fuzz/make_corpus.py --engine build/fuzz/tests/fuzz/engine_submit_fuzzer

image_decode: small valid JPEG (with and without an EXIF orientation), PNG
(RGB, RGBA, gray, palette, 16-bit, interlaced) and WebP (lossy, lossless)
images from Pillow, truncated and bit-flipped copies of them, other formats
(GIF, BMP) that must be named and refused, and decompression bombs (a PNG and
a JPEG header declaring 100000 x 100000 pixels in a few dozen bytes). Each
file starts with the two control bytes the harness reads (pixel limit and
resize mode; output size).

model_sniff: a TorchScript archive (torch.jit.save), eager weights
(torch.save), a zip that is not PyTorch's, an ONNX file (torch.onnx's
protobuf head), and truncations of each.

model_load: small valid model files of each format the loader opens: a
TorchScript archive (torch.jit.save) of one and of two inputs, an ONNX model
(onnx.helper, when the onnx package is installed), the record layout of an
AOTInductor package (sniffed and size-checked only: model_load_fuzzer.cpp says
why), and eager weights (refused).

arrow_import, engine_submit: the harnesses decode their bytes into C Data
structs (their own encoding, not Arrow IPC), so their seeds are made by the
fuzzers themselves: a fixed number of runs from an empty corpus with a fixed
seed, merged (-merge=1) down to the inputs that add coverage; among them arrays
of every supported layout that import and convert (engine_submit: submissions
that score). Needs the built fuzzer (bash .ci/fuzz --build-only).
"""

import argparse
import io
import os
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
# engine_submit runs a real engine per input (threads started and joined):
# fewer runs than arrow_import's 100,000 make its seeds in a few minutes.
ENGINE_RUNS = 20_000


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def image_corpus():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(15)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8), "RGB")
    seeds = {}

    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    seeds["rgb.jpg"] = save(rgb, "JPEG", quality=80)
    seeds["exif6.jpg"] = save(rgb, "JPEG", exif=exif.tobytes())
    seeds["gray.jpg"] = save(rgb.convert("L"), "JPEG")
    seeds["cmyk.jpg"] = save(rgb.convert("CMYK"), "JPEG")
    seeds["progressive.jpg"] = save(rgb, "JPEG", progressive=True)
    seeds["rgb.png"] = save(rgb, "PNG")
    seeds["rgba.png"] = save(rgb.convert("RGBA"), "PNG")
    seeds["gray.png"] = save(rgb.convert("L"), "PNG")
    seeds["palette.png"] = save(rgb.convert("P"), "PNG")
    gray16 = (np.arange(35, dtype=np.uint16) * 1800).reshape(5, 7)
    seeds["gray16.png"] = save(Image.fromarray(gray16), "PNG")
    seeds["interlaced.png"] = save(rgb, "PNG", interlace=1)
    seeds["lossy.webp"] = save(rgb, "WEBP", quality=50)
    seeds["lossless.webp"] = save(rgb.convert("RGBA"), "WEBP", lossless=True)
    seeds["image.gif"] = save(rgb, "GIF")
    seeds["image.bmp"] = save(rgb, "BMP")

    # Near-valid: truncated and with a flipped byte in the middle.
    for name in ("rgb.jpg", "rgb.png", "lossy.webp"):
        data = seeds[name]
        seeds["truncated-" + name] = data[: len(data) * 2 // 3]
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x5A
        seeds["flipped-" + name] = bytes(flipped)

    # Decompression bombs: headers declaring 100000 x 100000 pixels.
    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    png = b"\x89PNG\r\n\x1a\n"
    seeds["bomb.png"] = png + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    jpeg = bytearray(seeds["rgb.jpg"])
    sof = jpeg.find(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, 60_000, 60_000)
    seeds["bomb.jpg"] = bytes(jpeg)

    # Control bytes: byte 0 bit 0 = torchspark's default pixel limit, bit 1 =
    # stretch; byte 1 = output size. Bombs at the default limit.
    for name, data in sorted(seeds.items()):
        control = 1 if name.startswith("bomb") else (len(name) % 4)
        write("image_decode", name, bytes([control, 0x37]) + data)


def _modules():
    """Two small modules: x * 2 + 1, and two inputs to a dict of outputs."""
    import torch

    class Affine(torch.nn.Module):
        def forward(self, x):
            return x * 2 + 1

    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return {"sum": x + y, "first": x}

    return Affine(), TwoInputs()


def _saved(save, obj):
    """The bytes ``save(obj, file)`` writes (torch.jit.save, torch.save)."""
    buf = io.BytesIO()
    save(obj, buf)
    return buf.getvalue()


def model_corpus():
    import torch

    seeds = {}
    seeds["torchscript.pt"] = _saved(torch.jit.save, torch.jit.script(_modules()[0]))
    seeds["eager-weights.pt"] = _saved(torch.save, {"w": torch.ones(2)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a model")
    seeds["other.zip"] = buf.getvalue()
    # An ONNX ModelProto's head: ir_version (field 1, varint), producer_name (2), opset_import (8).
    seeds["head.onnx"] = b"\x08\x08\x12\x07pytorch\x42\x04\x0a\x00\x10\x11"
    seeds["text.txt"] = b"definitely not a model\n"
    for name in ("torchscript.pt", "eager-weights.pt"):
        data = seeds[name]
        seeds["truncated-" + name] = data[: len(data) // 2]
        seeds["head-" + name] = data[:64]
    for name, data in sorted(seeds.items()):
        write("model_sniff", name, data)


def model_load_corpus():
    import torch

    affine, two_inputs = _modules()
    seeds = {
        "affine.pt": _saved(torch.jit.save, torch.jit.script(affine)),
        "two-inputs.pt": _saved(torch.jit.save, torch.jit.script(two_inputs)),
        "eager-weights.pt": _saved(torch.save, {"w": torch.ones(2)}),
    }
    # An AOTInductor package's record layout (the loader itself is not fuzzed).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("package/version", "1\n")
        z.writestr("package/.data/version", "1\n")
        z.writestr(
            "package/data/aotinductor/model/model.wrapper.cpp",
            "// generated\n" * 8,
            compress_type=zipfile.ZIP_DEFLATED,
        )
        z.writestr(
            "package/data/aotinductor/model/model_metadata.json", '{"AOTI_DEVICE_KEY": "cpu"}'
        )
    seeds["aoti-layout.pt2"] = buf.getvalue()
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        onnx = None
    if onnx is not None:
        graph = helper.make_graph(
            [
                helper.make_node("Mul", ["x", "two"], ["y"]),
                helper.make_node("Add", ["y", "one"], ["out"]),
            ],
            "affine",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 3])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["rows", 3])],
            [
                helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        seeds["affine.onnx"] = model.SerializeToString()
    for name, data in sorted(seeds.items()):
        write("model_load", name, data)


def self_seeded_corpus(target, fuzzer, runs):
    """Seeds the fuzzer makes itself (see the module docstring)."""
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    # Crash regressions (crash-*) stay; the generated seeds are made afresh.
    for path in out.iterdir():
        if not path.name.startswith("crash-"):
            path.unlink()
    # The fuzzers need clang's shared ASan runtime first in the process (as in .ci/fuzz).
    resources = subprocess.run(
        ["clang++", "-print-resource-dir"], capture_output=True, text=True, check=True
    )
    runtime = f"{resources.stdout.strip()}/lib/linux/libclang_rt.asan-x86_64.so"
    env = dict(os.environ, LD_PRELOAD=runtime)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [fuzzer, "-seed=15", f"-runs={runs}", "-max_len=512", scratch],
            check=True,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            [fuzzer, "-merge=1", str(out), scratch], check=True, env=env, stderr=subprocess.DEVNULL
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arrow", metavar="FUZZER", help="also remake the arrow_import seeds with this fuzzer"
    )
    parser.add_argument(
        "--engine", metavar="FUZZER", help="also remake the engine_submit seeds with this fuzzer"
    )
    args = parser.parse_args()
    image_corpus()
    model_corpus()
    model_load_corpus()
    if args.arrow:
        self_seeded_corpus("arrow_import", args.arrow, runs=100_000)
    if args.engine:
        self_seeded_corpus("engine_submit", args.engine, runs=ENGINE_RUNS)


if __name__ == "__main__":
    main()
