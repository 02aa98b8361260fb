"""ONNX: where ONNX Runtime's library is, exporting a module to ONNX, int8 ONNX.

The engine runs ONNX files natively (csrc/torchspark/models/onnx_model.cpp)
through ONNX Runtime's C library, which the ``onnxruntime`` package carries
(``pip install 'torchspark[onnx]'``); exporting needs ``onnx`` and
``onnxscript`` too (torch's exporter imports them), int8 needs
``onnxruntime.quantization``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

_LIBRARY_VARIABLE = "TORCHSPARK_ONNXRUNTIME_LIBRARY"
_INSTALL = "pip install 'torchspark[onnx]'"

# Recorded in the files torchspark exports: the keys of a dict output, one
# per line, or "" when the module returned a tensor or a tuple.
OUTPUT_NAMES = "torchspark.output_names"


def runtime_library() -> str | None:
    """The path of the ONNX Runtime library of the installed ``onnxruntime``
    (or ``onnxruntime-gpu``) package, found without importing it; None when
    neither is installed."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(location, "capi", "libonnxruntime.so*")))
        if found:
            return found[0]
    return None


def configure_runtime() -> None:
    """Point the native backend at the installed package's library (unless
    the user set ``TORCHSPARK_ONNXRUNTIME_LIBRARY``). The library is loaded
    only when an ONNX model is."""
    if os.environ.get(_LIBRARY_VARIABLE):
        return
    library = runtime_library()
    if library is not None:
        os.environ[_LIBRARY_VARIABLE] = library


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the '{module}' package: {_INSTALL}") from e


def export_onnx(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str,
    input_names: Sequence[str],
    keys: Sequence[str],
    outputs: int,
    dynamic_shapes: Any,
) -> None:
    """Export ``model`` with torch's dynamo ONNX exporter into one file
    (weights inside; ONNX's protobuf limit makes that 2 GB at most). The
    graph's outputs are named output_0, output_1, ... (the exporter names
    intermediate values after their ops, so a dict key could collide); the
    dict's ``keys`` (or "" for positional outputs) go into the file's metadata,
    which the engine's backend reads."""
    _require("onnxscript", "export(format='onnx')")
    # The exporter reports its steps on stdout and logs a warning per missing
    # torchvision op; a failure raises with its own text.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
            # torch's own deprecations inside the exporter, and its note that
            # inputs sharing a dynamic dimension share its name: nothing to act on.
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                input_names=list(input_names),
                output_names=[f"output_{i}" for i in range(outputs)],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    program.model.metadata_props[OUTPUT_NAMES] = "\n".join(keys)
    program.save(path, external_data=False)


def quantize_int8(source: str, path: str) -> None:
    """Dynamic int8 quantization of an ONNX file's MatMul/Gemm (Linear),
    LSTM/GRU and attention weights with ONNX Runtime's quantizer: weights
    int8 per output channel ahead of time, activations quantized per batch
    at run time. (ONNX Runtime's optional pre-processing was tried on the
    benchmark encoder: its symbolic shape inference fails on the dynamo
    export, and without it the quantized graph came out the same.)"""
    quantization = _require("onnxruntime.quantization", "export(format='onnx', quantize='int8')")
    # The quantizer keeps the graph's metadata (the output names). It warns
    # on the root logger that pre-processing is advised: said above, dropped.
    root = logging.getLogger()
    advice = _DropMessage("Please consider to run pre-processing")
    root.addFilter(advice)
    try:
        quantization.quantize_dynamic(
            source, path, weight_type=quantization.QuantType.QInt8, per_channel=True
        )
    finally:
        root.removeFilter(advice)


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)
