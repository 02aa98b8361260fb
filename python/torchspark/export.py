"""Turn an ``nn.Module`` into a file the native engine loads."""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["export"]

_FORMATS = ("torchscript", "aoti")
_PRECISIONS = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Precision(torch.nn.Module):
    """Runs ``module`` in a reduced float dtype, with float32 in and out."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> Any:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        out = self.module(*cast)
        if isinstance(out, torch.Tensor):
            return out.float() if out.is_floating_point() else out
        if isinstance(out, dict):
            return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        return tuple(v.float() if v.is_floating_point() else v for v in out)


def export(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    format: str = "torchscript",
    dynamic_batch: bool = True,
    precision: str | None = None,
) -> str:
    """Save ``module`` as a TorchScript archive or an AOTInductor package.

    ``example_inputs`` are positional inputs with a batch dimension first (use
    a batch of at least 2 rows: sizes 0 and 1 get specialised). TorchScript is
    traced, and runs any batch size. AOTInductor (``format="aoti"``) compiles
    the model ahead of time with a dynamic batch dimension when
    ``dynamic_batch``; it ignores autocast, so ``precision="bf16"``/``"fp16"``
    bakes the dtype in (float32 in and out). Returns the path.

    >>> import torch, torchspark, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> torchspark.export(torch.nn.Linear(4, 1), (torch.randn(8, 4),), path) == path
    True
    """
    path = os.fspath(path)
    if format not in _FORMATS:
        raise ValueError(f"format: expected one of {_FORMATS}, got {format!r}")
    if precision not in _PRECISIONS:
        raise ValueError(
            f"precision: expected one of {[p for p in _PRECISIONS if p]} or None, got {precision!r}"
        )
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"export: expected a torch.nn.Module, got {type(module).__name__}")
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    if not inputs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        raise ValueError("export: example_inputs must be tensors with a batch dimension")

    model = copy.deepcopy(module).eval()
    dtype = _PRECISIONS[precision]
    if dtype is not None:
        model = _Precision(model, dtype).eval()

    if format == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export, but its archives
            # are what LibTorch loads without a compiler.
            warnings.simplefilter("ignore")
            # strict=False: dict and list outputs are fine for the engine.
            traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
            torch.jit.save(traced, path)
        return path

    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 30)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
        if dtype is not None:
            dynamic_shapes = (dynamic_shapes,)  # _Precision.forward takes *inputs
    with torch.no_grad():
        # Names the package cannot otherwise tell the loader: the arguments (for
        # inputs given by name) and the keys of a dict output (its columns).
        metadata = {"torchspark.input_names": "\n".join(_argument_names(module, len(inputs)))}
        out = model(*inputs)
        if isinstance(out, dict):
            if not all(isinstance(k, str) and k and "\n" not in k for k in out):
                raise ValueError(
                    f"export: dict output keys must be non-empty strings without newlines, "
                    f"got {list(out)}"
                )
            metadata["torchspark.output_names"] = "\n".join(out)
        program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=path,
            inductor_configs={"aot_inductor.metadata": metadata},
        )
    return path


def _argument_names(module: torch.nn.Module, count: int) -> list[str]:
    """The first ``count`` positional parameter names of ``module.forward``, or []."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in positional]
    return names[:count] if len(names) >= count else []
