"""Turn an ``nn.Module`` into a file the native engine loads, checked against the module."""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import linecache
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import _onnx
from .errors import ExportError

__all__ = ["export"]

_log = logging.getLogger("torchspark")

_FORMATS = ("torchscript", "aoti", "onnx")
_QUANTIZATIONS = (None, "int8")
# The layers dynamic int8 quantization rewrites in a TorchScript export.
_INT8_LAYERS = {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}
_PRECISIONS = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# How close an export's outputs must be to the module's: (rtol, atol) by the
# dtype the model computes in. Exported graphs may fuse and reorder float
# reductions (AOTInductor does), so float32 gets more room than its epsilon;
# reduced precision is as loose as its 8 (bf16) or 11 (fp16) mantissa bits.
_TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


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
    quantize: str | None = None,
    tolerance: float | None = None,
    min_cosine: float = 0.99,
    verify: bool = True,
) -> str:
    """Save ``module`` as a TorchScript archive, an AOTInductor package or an
    ONNX model, checked.

    ``example_inputs`` are positional inputs with a batch dimension first (use
    a batch of at least 2 rows: sizes 0 and 1 get specialised). TorchScript is
    traced (a ``torch.jit.ScriptModule`` is saved as it is), and runs any batch
    size. AOTInductor (``format="aoti"``) compiles the model ahead of time with
    a dynamic batch dimension when ``dynamic_batch``; it ignores autocast, so
    ``precision="bf16"``/``"fp16"`` bakes the dtype in (float32 in and out).
    ONNX (``format="onnx"``, ``pip install 'torchspark[onnx]'``) goes through
    ``torch.onnx.export``'s dynamo exporter into one file, with a dynamic batch
    dimension (and a dynamic sequence dimension for token inputs: integer
    inputs of dim >= 2 and the inputs of their length); the engine runs it
    with ONNX Runtime. Returns the path.

    ``quantize="int8"`` (TorchScript and ONNX) quantizes the weights of Linear
    (and LSTM/GRU) layers to int8 ahead of time and the activations per batch
    (dynamic quantization: PyTorch's ``quantize_dynamic``, ONNX Runtime's
    ``quantize_dynamic``). Its outputs differ from the float module's by design,
    so the check holds them to a stated tolerance instead: every float output
    with two or more values per row must keep a cosine similarity to the float
    output of at least ``min_cosine`` on every row (embeddings, logits), and
    every float output must stay within ``tolerance`` (max |difference|;
    default: 5% of the output's largest |value| for outputs of one value per
    row, unchecked for the others). Integer outputs (argmax labels) may change
    and are not compared. The figures are logged (logger ``torchspark``).

    The export never silently computes something else than the module: a
    trace that had to bake in a data-dependent branch (Python control flow on
    a tensor's value) raises :class:`torchspark.ExportError` naming the line,
    and the exported file is loaded and run beside the module on the example
    inputs, on 1 row and on twice the example's rows (and, for a trace with
    token inputs, integer tensors of dim >= 2, on the example cut to half its
    sequence length: a trace can bake in the example's length); any output
    that differs (beyond float tolerances of the dtype it is computed in;
    exact for integers and booleans) raises :class:`torchspark.ExportError` with the
    largest difference. ``verify=False`` skips both checks.

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
    if quantize not in _QUANTIZATIONS:
        raise ValueError(f"quantize: expected 'int8' or None, got {quantize!r}")
    if quantize is not None and (format == "aoti" or _PRECISIONS[precision] is not None):
        raise ValueError(
            "export: quantize='int8' is for format='torchscript' or 'onnx' at float32 precision, "
            f"got format={format!r}, precision={precision!r}"
        )
    if format == "onnx" and precision == "bf16":
        raise ValueError(
            "export: format='onnx' with precision='bf16': ONNX Runtime's CPU kernels, where "
            "the export is checked, have no bf16 Gemm (Linear) and refuse the file; export ONNX "
            "in fp32 (or quantize='int8', or precision='fp16'), or run a TorchScript export with "
            "precision='bf16' (autocast)"
        )
    if not 0.0 < min_cosine <= 1.0 or (tolerance is not None and tolerance < 0):
        raise ValueError(
            f"export: min_cosine must be in (0, 1] and tolerance >= 0, got {min_cosine!r}, "
            f"{tolerance!r}"
        )
    check_module(module, "export")
    scripted = isinstance(module, torch.jit.ScriptModule)
    if scripted and (format != "torchscript" or precision not in (None, "fp32") or quantize):
        raise ValueError(
            "export: a torch.jit.ScriptModule is saved as it is: format='torchscript', no "
            f"precision, no quantization, got format={format!r}, precision={precision!r}, "
            f"quantize={quantize!r}"
        )
    inputs = as_inputs(example_inputs)

    model = module if scripted else copy.deepcopy(module)
    model = model.eval()
    dtype = _PRECISIONS[precision]
    if dtype is not None:
        model = _Precision(model, dtype).eval()

    if scripted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            torch.jit.save(model, path)
    elif format == "torchscript":
        traced = model
        if quantize:
            with warnings.catch_warnings():
                # torch.ao.quantization is deprecated for torchao, whose int8
                # tensors a TorchScript trace cannot hold: this is the way left.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*quantized tensor creation")
                traced = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(model), _INT8_LAYERS, dtype=torch.qint8
                )
        _trace(traced, inputs, path, verify)
    elif format == "onnx":
        _export_onnx(module, model, inputs, path, dynamic_batch, dtype is not None, quantize)
    else:
        _compile(module, model, inputs, path, dynamic_batch, dtype is not None)
    if verify:
        limits = (tolerance, min_cosine) if quantize else None
        _verify(model, path, format, inputs, dynamic_batch, dtype or torch.float32, limits)
    return path


def check_module(module: Any, where: str) -> None:
    """TypeError unless ``module`` is an ``nn.Module`` (a plain function is not)."""
    if isinstance(module, torch.nn.Module):
        return
    what = (
        f"the function '{getattr(module, '__qualname__', module)}'"
        if callable(module)
        else f"a {type(module).__name__}"
    )
    raise TypeError(
        f"{where}: expected a torch.nn.Module or the path of an exported model "
        f"(torchspark.export), got {what}; wrap a function in an nn.Module whose forward "
        "calls it"
    )


def as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple of tensors with a batch dimension, checked."""
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    if not inputs or not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in inputs):
        raise ValueError("export: example_inputs must be tensors with a batch dimension")
    return inputs


def _trace(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str, strict: bool):
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # strict=False: dict and list outputs are fine for the engine.
        traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
    for w in caught:
        # torch.jit is deprecated in favour of torch.export, but its archives
        # are what LibTorch loads without a compiler: that warning is dropped.
        if issubclass(w.category, DeprecationWarning) and "torch.jit" in str(w.message):
            continue
        if strict and issubclass(w.category, torch.jit.TracerWarning):
            raise ExportError(_tracer_message(w))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    torch.jit.save(traced, path)


def _tracer_message(w: warnings.WarningMessage) -> str:
    line = linecache.getline(w.filename, w.lineno).strip()
    return (
        f"export: the trace may not compute what the module does. At {w.filename}:{w.lineno}"
        + (f" ({line})" if line else "")
        + f": {str(w.message).splitlines()[0]} A trace records the path the example inputs "
        "took and bakes that branch in for every batch. Either script the module "
        "(torch.jit.script, then export the ScriptModule), make the branch tensor-only "
        "(torch.where instead of Python if on a tensor's value), or use format='aoti', whose "
        "torch.export refuses data-dependent control flow with its own message. "
        "verify=False exports the trace anyway."
    )


def _dynamic_shapes(
    inputs: tuple[torch.Tensor, ...], dynamic_batch: bool, wrapped: bool, sequence: bool
) -> Any:
    """torch.export's dynamic_shapes: dim 0 of every input dynamic when
    ``dynamic_batch``, and with ``sequence`` dim 1 of the token inputs too
    (inputs of dim >= 2 whose dim 1 is the first integer input's, when > 1).
    ``wrapped``: the model's forward takes ``*inputs`` (_Precision)."""
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1, max=1 << 30)
    tokens = _token_input(inputs) if sequence else None
    length = tokens.shape[1] if tokens is not None and tokens.shape[1] > 1 else None
    seq = torch.export.Dim("sequence", min=1, max=1 << 20) if length else None
    shapes = tuple(
        {0: batch, 1: seq} if seq and x.dim() >= 2 and x.shape[1] == length else {0: batch}
        for x in inputs
    )
    return (shapes,) if wrapped else shapes


def _output_keys(out: Any) -> list[str]:
    """The keys of a dict output (its columns), checked; [] for other outputs."""
    if not isinstance(out, dict):
        return []
    if not all(isinstance(k, str) and k and "\n" not in k for k in out):
        raise ValueError(
            f"export: dict output keys must be non-empty strings without newlines, got {list(out)}"
        )
    return list(out)


def _compile(
    module: torch.nn.Module,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str,
    dynamic_batch: bool,
    wrapped: bool,
) -> None:
    with torch.no_grad():
        # Names the package cannot otherwise tell the loader: the arguments (for
        # inputs given by name) and the keys of a dict output (its columns).
        metadata = {"torchspark.input_names": "\n".join(argument_names(module, len(inputs)))}
        keys = _output_keys(model(*inputs))
        if keys:
            metadata["torchspark.output_names"] = "\n".join(keys)
        shapes = _dynamic_shapes(inputs, dynamic_batch, wrapped, sequence=False)
        program = torch.export.export(model, inputs, dynamic_shapes=shapes)
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=path,
            inductor_configs={"aot_inductor.metadata": metadata},
        )


def _export_onnx(
    module: torch.nn.Module,
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str,
    dynamic_batch: bool,
    wrapped: bool,
    quantize: str | None,
) -> None:
    names = argument_names(module, len(inputs)) or [f"input_{i}" for i in range(len(inputs))]
    with torch.no_grad():
        out = model(*inputs)
    keys = _output_keys(out)
    count = len(torch.utils._pytree.tree_leaves(out))
    shapes = _dynamic_shapes(inputs, dynamic_batch, wrapped, sequence=True)
    with tempfile.TemporaryDirectory(prefix="torchspark-onnx-") as scratch:
        exported = os.path.join(scratch, "float.onnx") if quantize else path
        _onnx.export_onnx(model, inputs, exported, names, keys, count, shapes)
        if quantize:
            _onnx.quantize_int8(exported, path)


def _load(path: str, format: str) -> Any:
    if format == "torchscript":
        return torch.jit.load(path)
    if format == "onnx":
        # The engine's own backend: the export is checked where it will run.
        from . import _C
        from .engine import unpack

        loaded = _C.load_model(path, torch.device("cpu"), 1)
        return lambda *xs: unpack(loaded.forward(list(xs)))
    return torch._inductor.aoti_load_package(path)


def _verify(
    model: torch.nn.Module,
    path: str,
    format: str,
    inputs: tuple[torch.Tensor, ...],
    dynamic_batch: bool,
    compute_dtype: torch.dtype,
    limits: tuple[float | None, float] | None = None,
) -> None:
    """ExportError unless the file at ``path`` computes what ``model`` does
    (within ``limits`` = (tolerance, min_cosine) for a quantized file)."""
    exported = _load(path, format)
    rows = inputs[0].shape[0]
    batches = [(f"the example inputs ({rows} rows)", inputs)]
    if dynamic_batch:
        batches.append(("1 row of the example", tuple(x[:1] for x in inputs)))
        batches.append(
            (
                f"{2 * rows} rows (the example, then reversed)",
                tuple(torch.cat([x, x.flip(0)]) for x in inputs),
            )
        )
    shorter = _shorter_sequences(inputs)
    if shorter is not None and (format == "torchscript" or (format == "onnx" and dynamic_batch)):
        # A trace can bake in the example's sequence length (token ids and
        # masks are padded per batch to other lengths at run time); an ONNX
        # export with dynamic dims declares that length dynamic, which this
        # holds it to (without, its shapes are the example's).
        batches.append(shorter)
    for label, batch in batches:
        with torch.no_grad():
            try:
                expected = model(*batch)
            except Exception:
                continue  # the module itself cannot run this batch: nothing to hold the export to
            try:
                actual = exported(*batch)
            except Exception as e:
                raise ExportError(
                    f"export: the exported {format} model fails on {label} where the module "
                    f"runs: {type(e).__name__}: {e}"
                ) from e
        if limits is None:
            _compare(expected, actual, label, format, compute_dtype)
        else:
            _compare_quantized(expected, actual, label, format, *limits)


def _token_input(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The first integer input of dim >= 2 (token ids), if any."""
    return next(
        (x for x in inputs if x.dim() >= 2 and not x.is_floating_point() and x.dtype != torch.bool),
        None,
    )


def _shorter_sequences(
    inputs: tuple[torch.Tensor, ...],
) -> tuple[str, tuple[torch.Tensor, ...]] | None:
    """The example with its token inputs cut to half their length: every
    input of dim >= 2 whose dim 1 is the length L of the first integer input
    of dim >= 2 (token ids, and their mask and types), cut to L // 2; None
    without such an input or with L < 2."""
    tokens = _token_input(inputs)
    if tokens is None or tokens.shape[1] < 2:
        return None
    length = tokens.shape[1]
    cut = length // 2
    batch = tuple(x[:, :cut] if x.dim() >= 2 and x.shape[1] == length else x for x in inputs)
    return f"the example cut to {cut} of its {length} tokens (dim 1)", batch


def _paired_outputs(
    expected: Any, actual: Any, label: str, what: str
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(where, module's, export's) for each output tensor, once the export
    (``what``: "exported onnx", "int8 onnx") returns as many tensors of the
    same dtypes and shapes as the module; ExportError otherwise."""
    want = torch.utils._pytree.tree_leaves(expected)
    got = torch.utils._pytree.tree_leaves(actual)
    if len(want) != len(got):
        raise ExportError(
            f"export: on {label} the module returns {len(want)} tensors but the {what} model "
            f"{len(got)}"
        )
    for i, (e, a) in enumerate(zip(want, got, strict=True)):
        where = f"export: output {i} on {label}"
        if not isinstance(e, torch.Tensor) or not isinstance(a, torch.Tensor):
            raise ExportError(
                f"{where}: expected tensors, got {type(e).__name__} and {type(a).__name__}"
            )
        if e.shape != a.shape or e.dtype != a.dtype:
            raise ExportError(
                f"{where}: the module gives {e.dtype} {list(e.shape)}, the {what} model "
                f"{a.dtype} {list(a.shape)}"
            )
        yield where, e, a.to(e.device)


def _compare(expected: Any, actual: Any, label: str, format: str, compute: torch.dtype) -> None:
    for where, e, a in _paired_outputs(expected, actual, label, f"exported {format}"):
        if e.is_floating_point() or e.is_complex():
            rtol, atol = _TOLERANCES.get(compute, _TOLERANCES[torch.float32])
            if e.dtype in _TOLERANCES:  # an output in a coarser dtype than the compute
                rtol, atol = max(rtol, _TOLERANCES[e.dtype][0]), max(atol, _TOLERANCES[e.dtype][1])
            same = torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
            tolerance = f" (rtol {rtol:g}, atol {atol:g})"
        else:
            same = torch.equal(a, e)
            tolerance = " (integers: exact)"
        if not same:
            diff = (a.double() - e.double()).abs().nan_to_num(float("inf"))
            worst = int(diff.argmax())
            raise ExportError(
                f"{where}: the exported {format} model differs from the module{tolerance}: "
                f"max |difference| {diff.max().item():.6g} at flat index {worst} "
                f"(module {e.flatten()[worst].item():.6g}, export {a.flatten()[worst].item():.6g})"
                ". The export does not compute what the module does; if a trace baked in a "
                "branch or a shape, script the module or use format='aoti'"
            )


def _compare_quantized(
    expected: Any, actual: Any, label: str, format: str, tolerance: float | None, min_cosine: float
) -> None:
    """ExportError unless an int8 export stays within the stated limits of the
    float module (see :func:`export`); logs the figures."""
    for where, e, a in _paired_outputs(expected, actual, label, f"int8 {format}"):
        if not e.is_floating_point():
            continue  # labels from an int8 model may change; not held to the float module
        e64, a64 = e.double(), a.double()
        worst = (a64 - e64).abs().nan_to_num(float("inf")).max().item() if e.numel() else 0.0
        cosine = None
        if e.dim() >= 2 and e.shape[0] > 0 and e[0].numel() >= 2:
            rows = torch.nn.functional.cosine_similarity(e64.flatten(1), a64.flatten(1), dim=1)
            cosine = rows.nan_to_num(-1.0).min().item()
        limit = tolerance
        if limit is None and cosine is None:
            limit = 0.05 * (e64.abs().max().item() if e.numel() else 0.0)
        figures = f"max |difference| {worst:.6g}" + (
            f", min cosine {cosine:.6f}" if cosine is not None else ""
        )
        _log.info("%s, int8 %s model against the module: %s", where, format, figures)
        if (cosine is not None and cosine < min_cosine) or (limit is not None and worst > limit):
            bounds = [f"min_cosine {min_cosine:g}"] if cosine is not None else []
            if limit is not None:
                bounds.append(f"tolerance {limit:.6g}")
            raise ExportError(
                f"{where}: the int8 {format} model is further from the float module than "
                f"allowed ({', '.join(bounds)}): {figures}. Quantization changes values; accept "
                "more with tolerance=/min_cosine=, or export without quantize"
            )


def argument_names(module: torch.nn.Module, count: int | None = None) -> list[str]:
    """The first ``count`` (default: all) positional parameter names of
    ``module.forward``, or [] when it has fewer."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in positional]
    if count is None:
        return names
    return names[:count] if len(names) >= count else []


def export_cached(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    format: str = "torchscript",
    precision: str | None = None,
) -> str:
    """:func:`export` once per content: the file lives in the model cache
    (``$TORCHSPARK_CACHE/exports``), named by :func:`module_digest`, and is
    reused while the module's code, weights and attributes, the examples'
    dtypes and row shapes, the format and the precision stay the same."""
    from .distribute import cache_dir, private_dir

    check_module(module, "export")
    inputs = as_inputs(example_inputs)
    digest = module_digest(module, inputs, format, precision)
    directory = os.path.join(cache_dir(), "exports")
    path = os.path.join(directory, f"{digest[:32]}.{'pt' if format == 'torchscript' else 'pt2'}")
    if os.path.isfile(path):
        return path
    private_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        export(module, inputs, tmp, format=format, precision=precision)
        os.replace(tmp, path)  # atomic: a reader sees no file or the whole, verified one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def module_digest(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], format: str, precision: str | None
) -> str:
    """sha256 of what an export of ``module`` depends on: each submodule's class
    source, plain attributes, parameters and buffers (names, dtypes, shapes,
    bytes), the examples' dtypes and row shapes, the format, the precision and
    torch's version. Two modules that could compute differently never share it."""
    h = hashlib.sha256()
    h.update(f"torch {torch.__version__}\n{format}\n{precision}\n".encode())
    for x in inputs:
        h.update(f"input {x.dtype} {list(x.shape[1:])}\n".encode())
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        h.update(buffer.getvalue())
        return h.hexdigest()
    for name, sub in module.named_modules():
        h.update(f"module {name} {_class_source(type(sub))}\n".encode())
        plain = {
            k: v
            for k, v in vars(sub).items()
            if k not in ("_parameters", "_buffers", "_modules", "training")
            and not k.endswith("_hooks")
            and not k.endswith("_hooks_with_kwargs")
            and not isinstance(v, (torch.Tensor, torch.nn.Module))
        }
        # repr of an object without its own __repr__ holds its address: a
        # cache miss, never a false hit.
        h.update(repr(sorted(plain.items(), key=lambda kv: kv[0])).encode())
        for key, tensor in vars(sub).items():
            if isinstance(tensor, torch.Tensor):  # tensors kept as plain attributes
                h.update(key.encode())
                _update_tensor(h, tensor)
    for key, tensor in module.state_dict().items():
        h.update(f"state {key}\n".encode())
        _update_tensor(h, tensor)
    return h.hexdigest()


def _update_tensor(h: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    h.update(f"{t.dtype} {list(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        # No source (a REPL class): its name and its forward's bytecode and constants.
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        body = (code.co_code.hex(), repr(code.co_consts)) if code is not None else ""
        return f"{cls.__module__}.{cls.__qualname__} {body}"
