"""One torchspark build per torch release: its version tag, its torch pin, the import check.

torchspark's extension links LibTorch's C++ ABI, which changes between torch
releases, so a build works with exactly the torch release it was compiled
against (the scheme of torchvision and pyg-lib):

- the wheel requires that release (``Requires-Dist: torch==2.13.0``), so pip
  installs or keeps the matching torch, and
- its version carries the release as a local tag (``0.1.0+pt213``,
  ``0.1.0+pt2141``), so builds for several releases sit side by side in one
  wheel folder or index and ``pip install "torchspark==0.1.0+pt2141"`` picks one.

The source distribution has neither: it builds against whatever torch is
installed (``pip install --no-build-isolation ...``), and the wheel it makes
then pins that torch.

This file is read twice. At build time scikit-build-core loads it as the
dynamic-metadata provider named in pyproject.toml (``TorchRelease``; it is
imported on its own, not as part of the package, so it imports nothing from
torchspark). At import time ``torchspark/__init__.py`` calls
``check_installed_torch`` before the extension is loaded.

>>> local_tag("2.14.1+cu130")
'pt2141'
>>> torch_requirement("2.13.0+cpu")
'torch==2.13.0'
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from typing import Any

_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def release(torch_version: str) -> str:
    """The public release of a torch version: ``'2.14.1+cu130'`` -> ``'2.14.1'``."""
    match = _RELEASE.match(torch_version)
    if match is None:
        raise ValueError(
            f"torch version {torch_version!r}: expected a release X.Y.Z "
            "(optionally with a local tag such as +cpu)"
        )
    return match.group(0)


def local_tag(torch_version: str) -> str:
    """The local version tag of a torchspark build for that torch: ``'pt2141'``."""
    return "pt" + release(torch_version).replace(".", "")


def torch_requirement(torch_version: str) -> str:
    """The requirement a build for that torch carries: ``'torch==2.14.1'``.

    Any build variant of the release (CPU, CUDA) satisfies it: the extension
    links only LibTorch's device-generic libraries (torch, torch_cpu, c10,
    torch_python), which every variant ships.
    """
    return f"torch=={release(torch_version)}"


def check_installed_torch(torchspark_version: str, built: str, installed: str) -> None:
    """Raise ImportError with the one command that fixes it when the releases differ."""
    if release(built) == release(installed):
        return
    wanted = f"{torchspark_version}+{local_tag(installed)}"
    raise ImportError(
        f"torchspark {torchspark_version}+{local_tag(built)} was built against torch {built} "
        f"but torch {installed} is installed: LibTorch's C++ ABI changes between releases, "
        f"so each torch release has its own torchspark build. Install the one for torch "
        f"{release(installed)}:\n"
        f'    pip install "torchspark=={wanted}"\n'
        "(from the index or folder that holds torchspark's wheels: add --find-links or "
        "--extra-index-url). Where none exists for this torch, build it from the source "
        "distribution against the installed torch (needs a C++ compiler and CMake):\n"
        "    pip install --no-build-isolation --no-deps --force-reinstall "
        f"torchspark-{torchspark_version}.tar.gz"
    )


def _installed_torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "torchspark's build needs torch installed in the build environment (it links "
            "LibTorch from the torch package): pip install torch==X.Y.Z first, then build "
            "with --no-build-isolation"
        ) from None


class TorchRelease:
    """scikit-build-core's dynamic-metadata provider (``[[tool.dynamic-metadata]]``).

    Settings (pyproject.toml): ``version``, the release of torchspark itself,
    and ``dependencies``, the requirements besides torch. Sets ``version`` and
    ``dependencies`` from the torch installed in the build environment; for the
    source distribution, the plain version and an unpinned torch.
    """

    def __init__(self) -> None:
        self._state = "metadata_wheel"

    def build_state(self, build_state: str) -> None:
        self._state = build_state

    def dynamic_wheel(self, settings: Mapping[str, Any]) -> dict[str, bool]:
        # The sdist's torch requirement is replaced by the wheel's pin.
        return {"dependencies": True}

    def dynamic_metadata(
        self, settings: Mapping[str, Any], project: Mapping[str, Any]
    ) -> dict[str, Any]:
        unknown = set(settings) - {"version", "dependencies"}
        if unknown or not isinstance(settings.get("version"), str):
            raise ValueError(
                "[[tool.dynamic-metadata]] torchspark's TorchRelease provider: expected the "
                f"settings version (a string) and dependencies (a list), got {sorted(settings)}"
            )
        others = list(settings.get("dependencies", []))
        if self._state == "sdist":
            return {"version": settings["version"], "dependencies": ["torch", *others]}
        torch_version = _installed_torch_version()
        return {
            "version": f"{settings['version']}+{local_tag(torch_version)}",
            "dependencies": [torch_requirement(torch_version), *others],
        }
