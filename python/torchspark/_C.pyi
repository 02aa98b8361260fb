# Type stub of the private native module torchspark._C (csrc/bindings/module.cpp).
# Use the public API in torchspark/__init__.py; these signatures may change.
from typing import Any

import torch

TORCH_VERSION: str

def _set_error_types(
    unsupported_type: type[BaseException],
    invalid_arrow: type[BaseException],
    null_value: type[BaseException],
) -> None: ...
def to_tensor(
    obj: Any,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
    fill: bool | int | float = 0,
    dictionary: str = "indices",
    shape: list[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
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
    dtype: torch.dtype = ...,
    nulls: str = "error",
    fill: bool | int | float = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor: ...
def pad(
    obj: Any,
    max_len: int | None = None,
    pad_value: bool | int | float = 0,
    dtype: torch.dtype | None = None,
    nulls: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]: ...

class TensorExport:
    """A tensor exporting itself through the Arrow PyCapsule interface (zero-copy)."""

    def __init__(self, tensor: torch.Tensor, fixed_size_list: bool = False) -> None: ...
    def __arrow_c_array__(
        self, requested_schema: object | None = None
    ) -> tuple[object, object]: ...
    @property
    def tensor(self) -> torch.Tensor: ...
