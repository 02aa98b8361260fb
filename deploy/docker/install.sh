#!/usr/bin/env bash
# Installs torchspark's wheel for PYTHON, the torch release it was built against
# (the wheel pins it) and its runtime dependencies into PYTHON's environment.
#
# The one install step of deploy/docker/Dockerfile (the image's Python), and the
# one that tests/spark_packed_env_job.py runs in CI to build the virtualenv it
# packs with `python -m torchspark pack-env` and ships to local-cluster
# executors: what the image gets is what that test scores with.
#
# Usage: install.sh WHEEL|WHEEL_DIR [PYTHON]
#   WHEEL            a torchspark wheel file, or
#   WHEEL_DIR        a directory holding one for PYTHON's version (cp3XY tags):
#                    dist/ after .ci/setup, or the manylinux wheels' directory
#   PYTHON           default: python3
#   TORCH_INDEX_URL  an extra package index for torch (optional): the image
#                    passes https://download.pytorch.org/whl/cpu, or a CUDA
#                    one (.../whl/cu128) for the CUDA variant; without it torch
#                    comes from the configured index
set -euo pipefail

target=${1:?usage: install.sh WHEEL|WHEEL_DIR [PYTHON]}
python=${2:-python3}

tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ -f "$target" ]; then
  wheel=$target
else
  wheel=$(ls "$target"/torchspark-*-"$tag"-"$tag"-*.whl 2>/dev/null | head -n 1 || true)
fi
if [ -z "$wheel" ]; then
  echo "install.sh: no torchspark wheel for $tag ($python) in $target:" \
    "build one with that Python (.ci/setup builds dist/ for its own), or use the" \
    "manylinux wheels (cibuildwheel)" >&2
  exit 1
fi

extra=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  extra=(--extra-index-url "$TORCH_INDEX_URL")
fi
# numpy: torchspark imports it (text and report code); the 0.1.0 wheel does not
# declare it. No pyspark: the Python workers import Spark's own
# ($SPARK_HOME/python/lib/pyspark.zip, first on their PYTHONPATH).
"$python" -m pip install --no-cache-dir -q "${extra[@]}" "$wheel" numpy
"$python" -c "import torch, torchspark; print('install.sh: torchspark', torchspark.__version__, 'torch', torch.__version__, 'for', '$python')"
