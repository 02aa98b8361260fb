"""The exceptions torchspark raises.

Every message names the column (or model, or batch) and says what was expected
and what was found. Besides these, argument errors are plain ``TypeError`` /
``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "BadRowsError",
    "EngineClosedError",
    "ExportError",
    "InvalidArrowError",
    "ModelError",
    "NullValueError",
    "ResumeError",
    "TorchSparkError",
    "UnsupportedTypeError",
]


class TorchSparkError(Exception):
    """Base class of torchspark's own errors; catch it to handle any of them."""


class UnsupportedTypeError(TorchSparkError, TypeError):
    """An Arrow type or tensor dtype that torchspark does not convert (strings,
    decimals, timestamps with a time zone, maps, unions, complex tensors...)."""


class InvalidArrowError(TorchSparkError, ValueError):
    """A structurally invalid Arrow array: bad lengths, offsets, buffers or
    children, or a struct that was already released. Raised before any value
    is read."""


class NullValueError(TorchSparkError, ValueError):
    """A null value where the null policy is ``"error"``. The message gives the
    column, the number of nulls and the first null row."""


class ModelError(TorchSparkError, RuntimeError):
    """A model call failed: the model raised, ran out of memory on a single row,
    or returned outputs of the wrong shape. The message names the model, the
    batch and the rows of each request in it; other batches are unaffected."""


class EngineClosedError(TorchSparkError, RuntimeError):
    """A request was still queued when its engine was closed without draining."""


class ExportError(TorchSparkError, RuntimeError):
    """An export that would not compute what its module does: a trace that
    baked in a data-dependent branch (the message names the line), or an
    exported model whose outputs differ from the module's on the check batches
    (the message gives the largest difference)."""


class BadRowsError(TorchSparkError, RuntimeError):
    """More bad rows than ``max_bad_rows`` allows (or, without it, every row
    failing), with ``on_error="null"`` or ``"quarantine"``. The message gives
    the count, the errors by reason and the first bad rows."""


class ResumeError(TorchSparkError, ValueError):
    """A resumable write (``predict_to``) that cannot go on from what its output
    path holds: the model, the input or the options differ from those of the
    committed chunks (the message says which, what they were and are, and how
    to start over), or the path holds something else than such a job's output."""
