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
from ._torch_release import check_installed_torch as _check_installed_torch
from ._torch_release import local_tag as _local_tag

# The release of torchspark; each build adds its torch release as a local tag.
_RELEASE = "0.1.0"
_check_installed_torch(_RELEASE, _BUILT_TORCH_VERSION, torch.__version__)

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
    doctor,
    last_report,
    predict,
    predict_to,
    torch_udf,
)

_configure_onnx_runtime()
_C._set_error_types(
    UnsupportedTypeError, InvalidArrowError, NullValueError, ModelError, EngineClosedError
)

__version__ = f"{_RELEASE}+{_local_tag(_BUILT_TORCH_VERSION)}"

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
    "doctor",
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
