"""The test op library (tests/csrc/test_ops.cpp): test doubles as torch ops.

``load()`` makes ``torch.ops.torchspark_test.simulated_kernel``,
``.simulated_device`` and ``.oom_above`` available in this process, loading
``libtorchspark_test_ops.so`` with ``torch.ops.load_library`` from
``$TORCHSPARK_TEST_OPS`` (set by .ci/run), else from the C++ test build
(``build/ctest``, made by ``bash .ci/ctest``). When neither exists it builds
the library with ``bash .ci/ctest --build-only`` (bounded by BUILD_TIMEOUT_S).
The library links torch only, so it loads beside any torchspark build: the
installed wheel or the ASan variant (.ci/asan). Used by tests/conftest.py and
benchmarks/engine_bench.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO / "build" / "ctest" / "tests" / "csrc" / "libtorchspark_test_ops.so"
BUILD_COMMAND = ["bash", ".ci/ctest", "--build-only"]
# A first configure + build of the C++ tests takes about two minutes on two cores.
BUILD_TIMEOUT_S = 900
# Dropped from the build's environment: the ASan run preloads the sanitizer
# runtime and sets Python-only variables that a compiler must not inherit.
_NOT_FOR_THE_BUILD = ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC", "PYTHONPATH")

_lock = threading.Lock()
_loaded: str | None = None


class OpLibraryError(RuntimeError):
    """The op library could not be found, built or loaded."""


def _how_to_build() -> str:
    return f"build it with `cd {REPO} && {' '.join(BUILD_COMMAND)}` (needs `bash .ci/setup` first)"


def _build() -> None:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_THE_BUILD}
    try:
        result = subprocess.run(
            BUILD_COMMAND,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise OpLibraryError(
            f"building the test op library took over {BUILD_TIMEOUT_S} s; {_how_to_build()}"
        ) from e
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise OpLibraryError(
            f"building the test op library failed (exit {result.returncode}); "
            f"{_how_to_build()}\n{tail}"
        )


def load() -> str:
    """Loads the op library once per process; returns its path."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        explicit = os.environ.get("TORCHSPARK_TEST_OPS")
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise OpLibraryError(
                    f"TORCHSPARK_TEST_OPS={explicit}: no such file; unset it or {_how_to_build()}"
                )
        else:
            path = DEFAULT_PATH
            if not path.is_file():
                _build()
            if not path.is_file():
                raise OpLibraryError(f"no test op library at {path}; {_how_to_build()}")
        torch.ops.load_library(str(path))
        _loaded = str(path)
        return _loaded
