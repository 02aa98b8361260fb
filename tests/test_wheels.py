"""The repaired wheel that .ci/wheels made, checked beside the torch it is installed with.

.ci/wheels runs this module in the fresh virtualenv that holds torch and the
repaired wheel (``$TORCHSPARK_WHEEL``: its path; ``$TORCHSPARK_AUDITWHEEL``:
the auditwheel to ask). Elsewhere it is skipped: there is no repaired wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch

import torchspark

WHEEL = os.environ.get("TORCHSPARK_WHEEL")
pytestmark = pytest.mark.skipif(
    not WHEEL, reason="no repaired wheel: .ci/wheels runs these ($TORCHSPARK_WHEEL)"
)

TORCH_RELEASE = re.match(r"\d+\.\d+\.\d+", torch.__version__).group(0)
# LibTorch's libraries: the torch wheel provides them, the repaired wheel must not.
LIBTORCH = {"libc10.so", "libtorch.so", "libtorch_cpu.so", "libtorch_python.so"}
# What a manylinux system provides (auditwheel's policy lists, the ones _C may use).
SYSTEM = {
    "libc.so.6",
    "libm.so.6",
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libz.so.1",
    "ld-linux-x86-64.so.2",
}


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    with zipfile.ZipFile(WHEEL) as archive:
        yield archive


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


@pytest.fixture(scope="module")
def extension(wheel: zipfile.ZipFile, tmp_path_factory) -> Path:
    (name,) = [n for n in wheel.namelist() if re.fullmatch(r"torchspark/_C\..*\.so", n)]
    return Path(wheel.extract(name, tmp_path_factory.mktemp("wheel")))


def _dynamic(path: Path) -> tuple[list[str], list[str]]:
    """The DT_NEEDED entries and the RUNPATH/RPATH entries of an ELF file (readelf -d)."""
    out = subprocess.run(
        ["readelf", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    paths = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]", out)
    return needed, [p for entry in paths for p in entry.split(":")]


def test_tag_is_the_manylinux_policy_auditwheel_reports():
    tag = re.search(r"-(manylinux_\d+_\d+_x86_64)\.whl$", WHEEL)
    assert tag, f"{WHEEL}: expected a manylinux_X_Y_x86_64 platform tag"
    auditwheel = os.environ.get("TORCHSPARK_AUDITWHEEL", "auditwheel")
    shown = json.loads(
        subprocess.run(
            [auditwheel, "show", "--json", WHEEL], capture_output=True, text=True, check=True
        ).stdout
    )
    # The symbols the binaries use allow this policy; its library list does not
    # name LibTorch's, the one reason auditwheel gives for the plain linux tag.
    assert shown["sym_tag"] == tag.group(1), shown
    assert set(shown["external_libs"]) <= LIBTORCH, shown["external_libs"]
    assert not shown["unsupported_isa"]


def test_version_and_torch_pin_name_the_installed_torch(metadata):
    digits = TORCH_RELEASE.replace(".", "")
    assert metadata["Version"] == f"{torchspark._RELEASE}+pt{digits}"
    assert metadata["Version"] == torchspark.__version__
    assert metadata["Version"] == importlib.metadata.version("torchspark")
    torch_requirements = [r for r in metadata.get_all("Requires-Dist") if r.startswith("torch")]
    assert torch_requirements == [f"torch=={TORCH_RELEASE}"]


def test_wheel_filename_carries_the_local_version(metadata):
    assert Path(WHEEL).name.startswith(f"torchspark-{metadata['Version']}-cp")


def test_libtorch_is_not_vendored_and_codecs_are(wheel: zipfile.ZipFile):
    libs = [n for n in wheel.namelist() if n.startswith("torchspark.libs/") and n[-1] != "/"]
    names = {Path(n).name.split("-")[0] for n in libs}
    assert names == {"libturbojpeg", "libpng16"}, libs
    assert not [n for n in wheel.namelist() if re.search(r"lib(torch|c10)\w*\.so", n)]


def test_extension_finds_libtorch_in_torch_lib_and_codecs_in_the_wheel(extension: Path):
    needed, search_path = _dynamic(extension)
    assert "$ORIGIN/../torch/lib" in search_path
    assert "$ORIGIN/../torchspark.libs" in search_path
    vendored = {n for n in needed if n.startswith(("libturbojpeg-", "libpng16-"))}
    assert len(vendored) == 2, needed
    # Nothing else: not libtorch_cuda/libc10_cuda, so one build serves every variant of a release.
    assert set(needed) - vendored <= LIBTORCH | SYSTEM, needed
    assert set(needed) >= LIBTORCH, needed


def test_installed_extension_loads_torch_from_torch_lib():
    # The process maps LibTorch from the torch package the wheel sits beside.
    maps = Path("/proc/self/maps").read_text()
    torch_lib = (Path(torch.__file__).parent / "lib").resolve()
    assert str(Path(torchspark._C.__file__).resolve()) in maps
    assert str(torch_lib / "libtorch_cpu.so") in maps


def test_image_decoding_uses_the_vendored_codecs(tmp_path):
    # A PNG made by Pillow, decoded by the engine's native path (exact for a
    # lossless format at its own size), with the wheel's libpng mapped.
    import io

    import pyarrow as pa
    from PIL import Image

    pixels = torch.arange(4 * 5 * 3, dtype=torch.uint8).reshape(4, 5, 3) * 2
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="PNG")
    path = str(tmp_path / "identity.pt")
    torch.jit.script(torch.nn.Identity()).save(path)
    spec = torchspark.Input("img", kind="image", size=(4, 5), resize="stretch")
    with torchspark.Engine(path, inputs=spec) as engine:
        got = engine.run(pa.record_batch({"img": pa.array([buf.getvalue()], pa.binary())}))
    torch.testing.assert_close(got, pixels.permute(2, 0, 1).unsqueeze(0).float() / 255)
    maps = Path("/proc/self/maps").read_text()
    for codec in ("libpng16", "libturbojpeg"):
        assert re.search(rf"torchspark\.libs/{codec}-\w+\.so", maps), f"{codec}: not the wheel's"
