# Type stub of the private native module torchspark._C (csrc/bindings/*.cpp:
# module.cpp registers errors.cpp, arrow.cpp, models.cpp, engine.cpp). Use the
# public API in torchspark/__init__.py; these signatures may change.
# tests/test_stub.py checks this file against the built module: every name,
# each class's methods and properties, each signature's parameters and defaults.
from typing import Any, overload

import torch

TORCH_VERSION: str

# ---- errors.cpp ----

def _set_error_types(
    unsupported_type: type[BaseException],
    invalid_arrow: type[BaseException],
    null_value: type[BaseException],
    model: type[BaseException],
    engine_closed: type[BaseException],
) -> None:
    """The Python classes the core's error types raise as (torchspark.errors), set once."""

# ---- arrow.cpp ----

def to_tensor(
    obj: Any,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
    fill: bool | int | float = 0,
    dictionary: str = "indices",
    shape: list[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Arrow column as a tensor; (values, mask) with nulls="mask"."""

def to_tensors(
    obj: Any,
    columns: list[str] | None = None,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
    fill: bool | int | float = 0,
    dictionary: str = "indices",
    shape: list[int] | None = None,
) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]: ...
def gather(
    obj: Any,
    columns: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    nulls: str = "error",
    fill: bool | int | float = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar columns of a batch as one [rows, columns] tensor."""

def pad(
    obj: Any,
    max_len: int | None = None,
    pad_value: bool | int | float = 0,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ragged list column as (right-padded [rows, L] values, int64 lengths)."""

class TensorExport:
    """A tensor exporting itself through the Arrow PyCapsule interface (zero-copy)."""

    def __init__(self, tensor: torch.Tensor, fixed_size_list: bool = False) -> None: ...
    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...
    @property
    def tensor(self) -> torch.Tensor: ...

class BatchExport:
    """An output record batch: the ``keep`` columns of ``batch`` (re-exported
    zero-copy) beside tensors named ``names``, through the Arrow PyCapsule
    interface."""

    def __init__(
        self, batch: Any, keep: list[str], names: list[str], tensors: list[torch.Tensor]
    ) -> None: ...
    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...
    @property
    def num_rows(self) -> int: ...

# ---- models.cpp ----

class Model:
    """A loaded model (made by load_model only)."""

    @property
    def format(self) -> str:
        """The backend that loaded it: one of model_formats()."""

    @property
    def path(self) -> str: ...
    @property
    def input_names(self) -> list[str]:
        """The forward() argument names, when the format records them."""

    @property
    def supports_autocast(self) -> bool: ...
    def forward(self, inputs: list[torch.Tensor]) -> tuple[list[str], list[torch.Tensor]]: ...
    def __repr__(self) -> str: ...

def load_model(path: str, device: torch.device, num_runners: int = 1) -> Model:
    """Loads `path` with the backend that recognises it (ValueError otherwise)."""

def detect_format(path: str) -> str:
    """The format of the file at `path`: one of model_formats()."""

def model_formats() -> list[str]:
    """The registered model backends: "TorchScript", "AOTInductor"."""

# ---- engine.cpp ----

class EngineOptions:
    """The engine's options (csrc/torchspark/engine/options.h has each field's meaning)."""

    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self, **kwargs: Any) -> None:
        """Each keyword sets the field of that name (TypeError for an unknown name)."""

    device: torch.device
    batch_size: int
    max_tokens: int
    max_delay_ms: float
    precision: str  # "fp32" | "bf16" | "fp16"
    threads: int
    inflight: int
    static_batch: bool
    sort_window: int
    per_token_all: bool
    per_token_indices: list[int]
    per_token_names: list[str]
    inline_below_ms: float
    def validate(self) -> None:
        """ValueError naming the first field out of range."""

class Request:
    """One queued submission."""

    @property
    def id(self) -> int: ...
    @property
    def rows(self) -> int: ...
    def done(self) -> bool: ...
    def wait(self, timeout: float = -1.0) -> bool:
        """Waits up to `timeout` seconds (< 0: forever); returns done()."""

    def result(self) -> tuple[list[str], list[torch.Tensor]]:
        """(output names, output tensors); raises the request's error."""

class Engine:
    def __init__(
        self, model: Model, options: EngineOptions, specs: list[dict[str, Any]] | None = None
    ) -> None:
        """specs: one {"kind", "columns", "options"} dict per model input, for Arrow input."""

    def run_tensors(
        self, tensors: list[torch.Tensor], try_inline: bool
    ) -> tuple[list[str], list[torch.Tensor]] | Request:
        """The outputs when run inline (try_inline and the engine took it), else the Request."""

    def run_arrow(
        self, batch: Any, try_inline: bool
    ) -> tuple[list[str], list[torch.Tensor]] | Request: ...
    def flush(self) -> None: ...
    def close(self, drain: bool = True) -> None: ...
    @property
    def closed(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def histograms(self) -> dict[str, dict[str, Any]]:
        """Per latency and batch_rows: bucket bounds, counts (one more: +Inf) and sum."""

    def collect_garbage(self) -> None:
        """Destroys finished requests' Arrow data on this (GIL-holding) thread."""

def input_kinds() -> list[str]:
    """The registered input kinds, sorted: "gather", "pad", "tensor"."""

def input_tensors(batch: Any, specs: object) -> list[torch.Tensor]:
    """The tensors ``specs`` make of an Arrow ``batch``, as the model receives them."""
