"""torchspark: fast PyTorch batch inference inside Apache Spark.

The native core converts Arrow data to tensors without copies where the
layout allows, and tensors back to Arrow.

>>> import pyarrow as pa, torch, torchspark
>>> batch = pa.record_batch({"x": [1.0, 2.0], "y": [3.0, 4.0]})
>>> torchspark.gather(batch, ["x", "y"])
tensor([[1., 3.],
        [2., 4.]])
"""

from __future__ import annotations

import torch  # first: loads LibTorch, which torchspark._C links

from ._build_info import TORCH_VERSION as _BUILT_TORCH_VERSION


def _public_version(version: str) -> str:
    return version.split("+", 1)[0]


if _public_version(torch.__version__) != _public_version(_BUILT_TORCH_VERSION):
    raise ImportError(
        f"torchspark was built against torch {_BUILT_TORCH_VERSION} but torch "
        f"{torch.__version__} is installed: LibTorch's C++ ABI changes between releases. "
        f"Install torch=={_public_version(_BUILT_TORCH_VERSION)}, or rebuild torchspark "
        "against this torch (pip install --no-build-isolation .)."
    )

from . import _C  # noqa: E402
from ._onnx import configure_runtime as _configure_onnx_runtime  # noqa: E402
from .arrow import from_tensor, gather, pad, to_batch, to_tensor, to_tensors  # noqa: E402
from .engine import Engine, Future, Input  # noqa: E402
from .errors import (  # noqa: E402
    BadRowsError,
    EngineClosedError,
    ExportError,
    InvalidArrowError,
    ModelError,
    NullValueError,
    ResumeError,
    TorchSparkError,
    UnsupportedTypeError,
)
from .export import export  # noqa: E402
from .spark import (  # noqa: E402
    ArrowPredictor,
    Report,
    arrow_predictor,
    last_report,
    predict,
    predict_to,
    torch_udf,
)

_configure_onnx_runtime()
_C._set_error_types(
    UnsupportedTypeError, InvalidArrowError, NullValueError, ModelError, EngineClosedError
)

__version__ = "0.1.0"

__all__ = [
    "ArrowPredictor",
    "BadRowsError",
    "Engine",
    "EngineClosedError",
    "ExportError",
    "Future",
    "Input",
    "InvalidArrowError",
    "ModelError",
    "NullValueError",
    "Report",
    "ResumeError",
    "TorchSparkError",
    "UnsupportedTypeError",
    "__version__",
    "arrow_predictor",
    "export",
    "from_tensor",
    "gather",
    "last_report",
    "pad",
    "predict",
    "predict_to",
    "to_batch",
    "to_tensor",
    "to_tensors",
    "torch_udf",
]
